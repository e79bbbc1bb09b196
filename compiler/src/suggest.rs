//! Did-you-mean suggestions by edit distance.

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        let dist = strsim::levenshtein(word, c);
        let close = dist <= 2.max(word.len() / 3) || score >= 0.85;
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn finds_typos_not_strangers() {
        assert_eq!(closest("rnak", ["rank", "alpha"]), Some("rank"));
        assert_eq!(closest("gaet", ["gate", "up", "down"]), Some("gate"));
        assert_eq!(closest("zzzzzz", ["gate", "up", "down"]), None);
    }
}
