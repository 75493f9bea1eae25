//! The DAG: derived from what each stage declares it reads and writes, validated as a whole
//! before any work (every problem reported at once), and ordered topologically.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use lensnet_stages::{Dataset, Stage};

/// One problem with the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DagError {
    /// Two stages share a name (names key config, spans and audit rows).
    DuplicateName { stage: &'static str },
    /// A stage reads a dataset that no stage writes and that is not an external input.
    MissingProducer { stage: &'static str, dataset: Dataset },
    /// Two stages write the same dataset.
    DuplicateProducer { dataset: Dataset, stages: Vec<&'static str> },
    /// Stages that depend on each other in a circle.
    Cycle { stages: Vec<&'static str> },
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DagError::DuplicateName { stage } => write!(f, "two stages are named `{stage}`"),
            DagError::MissingProducer { stage, dataset } => {
                write!(f, "stage `{stage}` reads `{dataset}`, which no stage writes")
            }
            DagError::DuplicateProducer { dataset, stages } => {
                write!(f, "dataset `{dataset}` is written by several stages: {}", stages.join(", "))
            }
            DagError::Cycle { stages } => write!(f, "stages depend on each other in a cycle: {}", stages.join(" -> ")),
        }
    }
}

/// Validation failure: all problems together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DAG ({} problem(s)):\n{}", .0.len(), .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct DagErrors(pub Vec<DagError>);

/// A validated graph with stages in an order where every producer comes before its readers.
pub struct Dag {
    order: Vec<Arc<dyn Stage>>,
    /// For each stage (by index in `order`), the indices of the stages it reads from.
    upstream: Vec<Vec<usize>>,
}

impl fmt::Debug for Dag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dag").field("order", &self.names()).field("upstream", &self.upstream).finish()
    }
}

impl Dag {
    pub fn stages(&self) -> &[Arc<dyn Stage>] {
        &self.order
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.order.iter().map(|s| s.name()).collect()
    }

    /// Indices (in `stages()`) of the stages that `i` depends on directly.
    pub fn upstream(&self, i: usize) -> &[usize] {
        &self.upstream[i]
    }

    /// Indices of every stage downstream of `i` (its dependants, transitively).
    pub fn downstream(&self, i: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        for j in i + 1..self.order.len() {
            if self.upstream[j].iter().any(|u| *u == i || out.contains(u)) {
                out.insert(j);
            }
        }
        out
    }
}

/// Build and validate the graph. `external` lists datasets that come from outside the DAG
/// (the inbox's raw files).
pub fn build_dag(stages: Vec<Arc<dyn Stage>>, external: &[Dataset]) -> Result<Dag, DagErrors> {
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    for s in &stages {
        if !names.insert(s.name()) {
            errors.push(DagError::DuplicateName { stage: s.name() });
        }
    }
    let mut producers: BTreeMap<Dataset, Vec<usize>> = BTreeMap::new();
    for (i, s) in stages.iter().enumerate() {
        for d in s.writes() {
            producers.entry(*d).or_default().push(i);
        }
    }
    for (d, ps) in &producers {
        if ps.len() > 1 {
            errors.push(DagError::DuplicateProducer { dataset: *d, stages: ps.iter().map(|&i| stages[i].name()).collect() });
        }
    }
    // Edges: reader depends on every producer of what it reads.
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); stages.len()];
    for (i, s) in stages.iter().enumerate() {
        for d in s.reads() {
            match producers.get(d) {
                Some(ps) => deps[i].extend(ps.iter().copied().filter(|&p| p != i)),
                None if external.contains(d) => {}
                None => errors.push(DagError::MissingProducer { stage: s.name(), dataset: *d }),
            }
        }
    }
    // Kahn's algorithm, stable by declaration order; what is left over lies on or behind cycles.
    let mut indegree: Vec<usize> = deps.iter().map(|d| d.len()).collect();
    let mut order = Vec::with_capacity(stages.len());
    let mut done = vec![false; stages.len()];
    loop {
        let Some(next) = (0..stages.len()).find(|&i| !done[i] && indegree[i] == 0) else { break };
        done[next] = true;
        order.push(next);
        for (j, d) in deps.iter().enumerate() {
            if d.contains(&next) {
                indegree[j] -= 1;
            }
        }
    }
    if order.len() < stages.len() {
        for cycle in find_cycles(&deps, &done) {
            errors.push(DagError::Cycle { stages: cycle.iter().map(|&i| stages[i].name()).collect() });
        }
    }
    if !errors.is_empty() {
        return Err(DagErrors(errors));
    }
    let position: BTreeMap<usize, usize> = order.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
    let upstream = order
        .iter()
        .map(|&i| {
            let mut up: Vec<usize> = deps[i].iter().map(|d| position[d]).collect();
            up.sort_unstable();
            up
        })
        .collect();
    Ok(Dag { order: order.into_iter().map(|i| stages[i].clone()).collect(), upstream })
}

/// Distinct cycles among the unfinished nodes, each as a closed path (first node repeated).
fn find_cycles(deps: &[BTreeSet<usize>], done: &[bool]) -> Vec<Vec<usize>> {
    let mut cycles: Vec<Vec<usize>> = Vec::new();
    let mut seen_sets: BTreeSet<Vec<usize>> = BTreeSet::new();
    for start in (0..deps.len()).filter(|&i| !done[i]) {
        // Depth-first search for a path back to `start`.
        let mut stack = vec![(start, vec![start])];
        let mut visited = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for &next in deps[node].iter().filter(|&&n| !done[n]) {
                if next == start {
                    let mut key = path.clone();
                    key.sort_unstable();
                    if seen_sets.insert(key) {
                        // Data-flow direction (producer first), starting at the first-declared stage.
                        let mut cycle: Vec<usize> = path.iter().rev().copied().collect();
                        let min_at = cycle.iter().enumerate().min_by_key(|(_, &v)| v).map_or(0, |(k, _)| k);
                        cycle.rotate_left(min_at);
                        cycle.push(cycle[0]);
                        cycles.push(cycle);
                    }
                } else if visited.insert(next) {
                    let mut p = path.clone();
                    p.push(next);
                    stack.push((next, p));
                }
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use lensnet_stages::{RunCtx, StageError, StageReport};

    struct Fake {
        name: &'static str,
        reads: &'static [Dataset],
        writes: &'static [Dataset],
    }

    #[async_trait]
    impl Stage for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn reads(&self) -> &'static [Dataset] {
            self.reads
        }
        fn writes(&self) -> &'static [Dataset] {
            self.writes
        }
        async fn run(&self, _ctx: &RunCtx) -> Result<StageReport, StageError> {
            Ok(StageReport::default())
        }
    }

    fn s(name: &'static str, reads: &'static [Dataset], writes: &'static [Dataset]) -> Arc<dyn Stage> {
        Arc::new(Fake { name, reads, writes })
    }

    use Dataset::*;

    #[test]
    fn the_production_shape_orders_by_data_not_by_declaration() {
        let stages = vec![
            s("publish", &[Candidates, Verdicts], &[Published]),
            s("score", &[Tensors], &[Verdicts]),
            s("alertfinder", &[Photometry], &[Candidates]),
            s("preprocess", &[Candidates, Photometry], &[Tensors]),
            s("ingest", &[RawFiles], &[Photometry]),
        ];
        let dag = build_dag(stages, &[RawFiles]).unwrap();
        assert_eq!(dag.names(), vec!["ingest", "alertfinder", "preprocess", "score", "publish"]);
        assert_eq!(dag.upstream(2), &[0, 1]);
        assert_eq!(dag.downstream(1), BTreeSet::from([2, 3, 4]));
        assert_eq!(dag.downstream(4), BTreeSet::new());
    }

    /// Data-driven: each case lists the stages and every error expected, all at once.
    #[test]
    fn every_problem_is_reported_at_once() {
        type Case = (Vec<Arc<dyn Stage>>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                vec![s("alertfinder", &[Photometry], &[Candidates]), s("score", &[Tensors], &[Verdicts])],
                vec![
                    "stage `alertfinder` reads `photometry`, which no stage writes",
                    "stage `score` reads `tensors`, which no stage writes",
                ],
            ),
            (
                vec![
                    s("a", &[Verdicts], &[Candidates]),
                    s("b", &[Candidates], &[Verdicts]),
                    s("c", &[Photometry], &[Tensors]),
                    s("a", &[], &[Photometry]),
                    s("d", &[], &[Tensors]),
                ],
                vec![
                    "two stages are named `a`",
                    "dataset `tensors` is written by several stages: c, d",
                    "stages depend on each other in a cycle: a -> b -> a",
                ],
            ),
        ];
        for (stages, expected) in cases {
            let errs = build_dag(stages, &[RawFiles]).unwrap_err();
            let got: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
            assert_eq!(got, expected);
            assert!(errs.to_string().starts_with(&format!("invalid DAG ({} problem(s))", expected.len())));
        }
    }
}
