//! Graph editing for passes: users of a value, redirecting uses, removing
//! dead nodes, and renumbering into a canonical topological order.
//!
//! Rewrites may create nodes after the nodes that will read them; a pass
//! that does so ends with [`Ir::canonicalize`], which rebuilds the graph so
//! that index order is again a topological order (invariant 3 of
//! `verify.rs`), keeping untouched nodes in their original relative order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use petgraph::Direction;
use petgraph::stable_graph::StableGraph;
use petgraph::visit::EdgeRef;

use super::{Edge, Ir, NodeId, Op, Value};

impl Ir {
    /// The (node, operand index) pairs that read value `v`.
    pub fn users(&self, v: Value) -> Vec<(NodeId, u8)> {
        let mut out: Vec<(NodeId, u8)> = self
            .graph
            .edges_directed(v.0, Direction::Outgoing)
            .filter(|e| e.weight().out == v.1)
            .map(|e| (e.target(), e.weight().arg))
            .collect();
        out.sort();
        out
    }

    /// Makes every reader of `old` read `new` instead.
    pub fn replace_uses(&mut self, old: Value, new: Value) {
        let edges: Vec<_> = self
            .graph
            .edges_directed(old.0, Direction::Outgoing)
            .filter(|e| e.weight().out == old.1)
            .map(|e| (e.id(), e.target(), e.weight().arg))
            .collect();
        for (id, target, arg) in edges {
            self.graph.remove_edge(id);
            self.graph.add_edge(new.0, target, Edge { out: new.1, arg });
        }
        if self.loss == Some(old) {
            self.loss = Some(new);
        }
        if self.logits == Some(old) {
            self.logits = Some(new);
        }
    }

    /// Replaces node `id`'s operands by `inputs` (in operand order).
    pub fn set_inputs(&mut self, id: NodeId, inputs: &[Value]) {
        let old: Vec<_> = self
            .graph
            .edges_directed(id, Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.graph.remove_edge(e);
        }
        for (arg, &(src, out)) in inputs.iter().enumerate() {
            self.graph.add_edge(src, id, Edge { out, arg: arg as u8 });
        }
    }

    /// Removes nodes whose outputs nobody reads (sinks, the loss and the logits stay).
    pub fn remove_dead(&mut self) {
        loop {
            let dead: Vec<NodeId> = self
                .graph
                .node_indices()
                .filter(|&id| {
                    let node = &self.graph[id];
                    !matches!(node.op, Op::ParamGrad(_))
                        && self.graph.edges_directed(id, Direction::Outgoing).next().is_none()
                        && self.loss.is_none_or(|l| l.0 != id)
                        && self.logits.is_none_or(|l| l.0 != id)
                })
                .collect();
            if dead.is_empty() {
                return;
            }
            for id in dead {
                self.graph.remove_node(id);
            }
        }
    }

    /// Rebuilds the graph in a topological order that keeps the original
    /// relative order wherever dependencies allow (Kahn's algorithm taking the
    /// lowest original index first), so index order is topological again.
    pub fn canonicalize(&mut self) {
        let ids: Vec<NodeId> = self.graph.node_indices().collect();
        let mut indegree: BTreeMap<NodeId, usize> = ids
            .iter()
            .map(|&id| (id, self.graph.edges_directed(id, Direction::Incoming).count()))
            .collect();
        let mut ready: BinaryHeap<Reverse<NodeId>> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(&id, _)| Reverse(id))
            .collect();
        let mut order = Vec::with_capacity(ids.len());
        while let Some(Reverse(id)) = ready.pop() {
            order.push(id);
            for e in self.graph.edges_directed(id, Direction::Outgoing) {
                if let Some(d) = indegree.get_mut(&e.target()) {
                    *d -= 1;
                    if *d == 0 {
                        ready.push(Reverse(e.target()));
                    }
                }
            }
        }
        let mut graph = StableGraph::new();
        let mut map: BTreeMap<NodeId, NodeId> = BTreeMap::new();
        for &id in &order {
            map.insert(id, graph.add_node(self.graph[id].clone()));
        }
        for &id in &order {
            for e in self.graph.edges_directed(id, Direction::Outgoing) {
                if let (Some(&a), Some(&b)) = (map.get(&id), map.get(&e.target())) {
                    graph.add_edge(a, b, *e.weight());
                }
            }
        }
        self.loss = self.loss.and_then(|(n, o)| map.get(&n).map(|&m| (m, o)));
        self.logits = self.logits.and_then(|(n, o)| map.get(&n).map(|&m| (m, o)));
        self.graph = graph;
    }
}
