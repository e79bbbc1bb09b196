//! Module patterns: matching paths, and explaining a pattern that matches nothing.
//!
//! A pattern (without its root segment) matches a module when it matches the
//! module's full path (`layers[3].attn.q`) or its short path with the indexed
//! levels left out (`attn.q`): the repeated `layers[i]` level may be skipped.
//! `*` matches one segment, `**` any number (zero included), `{q,v}` one of
//! the names; an index `[..]` on a segment restricts the segment's index, and
//! a segment without one matches any index.

use crate::model::{Module, PathSeg};
use crate::syntax::ast::{IndexItem, SegKind, Segment};

fn seg_matches(p: &Segment, s: &PathSeg) -> bool {
    let name_ok = match &p.kind {
        SegKind::Name(n) => *n == s.name,
        SegKind::Alts(names) => names.iter().any(|n| n.name == s.name),
        SegKind::Any => true,
        SegKind::Deep => false,
    };
    name_ok
        && match (&p.index, s.index) {
            (None, _) => true,
            (Some(items), Some(i)) => items.iter().any(|it| it.contains(i)),
            (Some(_), None) => false,
        }
}

/// Whether `pat` matches all of `path`.
pub fn matches_path(pat: &[Segment], path: &[PathSeg]) -> bool {
    match pat.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first.kind == SegKind::Deep => (0..=path.len()).any(|k| matches_path(rest, &path[k..])),
        Some((first, rest)) => match path.split_first() {
            Some((s, tail)) => seg_matches(first, s) && matches_path(rest, tail),
            None => false,
        },
    }
}

/// Whether `pat` matches a prefix of `path` (used to explain failures).
fn matches_prefix(pat: &[Segment], path: &[PathSeg]) -> bool {
    match pat.split_first() {
        None => true,
        Some((first, rest)) if first.kind == SegKind::Deep => {
            (0..=path.len()).any(|k| matches_prefix(rest, &path[k..]))
        }
        Some((first, rest)) => match path.split_first() {
            Some((s, tail)) => seg_matches(first, s) && matches_prefix(rest, tail),
            None => false,
        },
    }
}

/// Whether the pattern (root excluded) matches the module.
pub fn matches_module(pat: &[Segment], m: &Module) -> bool {
    matches_path(pat, &m.path) || matches_path(pat, &m.short)
}

/// Why a pattern matched nothing, for the diagnostic.
#[derive(Debug, Clone, PartialEq)]
pub enum Miss {
    /// Segment `at` (index into the pattern, root excluded) has no match
    /// among `available` (names that exist at that level).
    Segment {
        at: usize,
        available: Vec<String>,
        suggestion: Option<String>,
    },
    /// Segment `at` names an indexed group, but no index it asks for exists.
    Index { at: usize, group: String, count: u64 },
    /// Every prefix matches, yet the pattern stops inside the tree (at a group).
    Incomplete { available: Vec<String> },
}

/// Explains why `pat` matches no module.
pub fn explain_miss(pat: &[Segment], modules: &[Module]) -> Miss {
    let paths: Vec<&[PathSeg]> = modules
        .iter()
        .flat_map(|m| [m.path.as_slice(), m.short.as_slice()])
        .collect();
    // The longest pattern prefix that matches a prefix of some path.
    let mut k = pat.len();
    while k > 0 && !paths.iter().any(|p| matches_prefix(&pat[..k], p)) {
        k -= 1;
    }
    if k == pat.len() {
        // Whole pattern matches prefixes: it stops at a group.
        let mut avail: Vec<String> = paths
            .iter()
            .filter_map(|p| {
                (1..p.len())
                    .find(|&j| matches_path(pat, &p[..j]))
                    .map(|j| p[j].name.clone())
            })
            .collect();
        avail.sort();
        avail.dedup();
        return Miss::Incomplete { available: avail };
    }
    // Names available right after the matched prefix.
    let mut available: Vec<String> = Vec::new();
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for p in &paths {
        for j in 0..p.len() {
            if matches_path(&pat[..k], &p[..j]) {
                available.push(p[j].name.clone());
                if let Some(i) = p[j].index {
                    let c = counts.entry(p[j].name.clone()).or_default();
                    *c = (*c).max(i + 1);
                }
            }
        }
    }
    available.sort();
    available.dedup();
    let seg = &pat[k];
    if let SegKind::Name(n) = &seg.kind
        && let Some(count) = counts.get(n)
        && seg.index.is_some()
    {
        return Miss::Index {
            at: k,
            group: n.clone(),
            count: *count,
        };
    }
    let suggestion = match &seg.kind {
        SegKind::Name(n) => crate::suggest::closest(n, available.iter().map(String::as_str)).map(str::to_string),
        SegKind::Alts(names) => names
            .iter()
            .filter(|n| !available.contains(&n.name))
            .find_map(|n| crate::suggest::closest(&n.name, available.iter().map(String::as_str)))
            .map(str::to_string),
        _ => None,
    };
    Miss::Segment {
        at: k,
        available,
        suggestion,
    }
}

/// Whether an index item lies outside `0..count`.
pub fn index_out_of_range(item: &IndexItem, count: u64) -> bool {
    match *item {
        IndexItem::One(i, _) => i >= count,
        IndexItem::Range(a, b, _) => a >= count || b >= count,
        IndexItem::All(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syntax::ast::{Item, Pattern};
    use crate::syntax::parse_file;

    fn pat(s: &str) -> Pattern {
        let f = parse_file(&format!("exclude {s}")).unwrap();
        match f.items.into_iter().next() {
            Some(Item::Exclude(e)) => e.pattern,
            _ => panic!(),
        }
    }

    fn path(s: &str) -> Vec<PathSeg> {
        s.split('.')
            .map(|seg| match seg.split_once('[') {
                Some((n, i)) => PathSeg {
                    name: n.into(),
                    index: Some(i.trim_end_matches(']').parse().unwrap()),
                },
                None => PathSeg {
                    name: seg.into(),
                    index: None,
                },
            })
            .collect()
    }

    #[test]
    fn globs_and_indices() {
        let m = |p: &str, s: &str| matches_path(&pat(p).segments[1..], &path(s));
        assert!(m("m.layers[3].attn.q", "layers[3].attn.q"));
        assert!(!m("m.layers[2].attn.q", "layers[3].attn.q"));
        assert!(m("m.layers[0..15].*.q", "layers[15].attn.q"));
        assert!(!m("m.layers[0..15].*.q", "layers[16].attn.q"));
        assert!(m("m.layers[1,3,5..6].attn.q", "layers[5].attn.q"));
        assert!(m("m.layers.attn.{q,v}", "layers[9].attn.v"));
        assert!(m("m.**", "layers[9].attn.v"));
        assert!(m("m.**.v", "layers[9].attn.v"));
        assert!(m("m.layers[*].**.down", "layers[1].mlp.down"));
        assert!(!m("m.*", "layers[9].attn.v"));
        assert!(m("m.*.*.*", "layers[9].attn.v"));
        assert!(
            !m("m.attn.*", "layers[9].attn.v"),
            "short paths are the caller's business"
        );
    }
}
