//! The dependency graph between managed views: a view that reads another managed view (found by
//! parsing its query, and from `pg_depend` for views built from their current query) runs after
//! it. Cycles are found and reported once; the graph handed to the scheduler is acyclic.

use std::collections::HashMap;

use etl_core::executor::Graph;
use petgraph::algo::tarjan_scc;
use petgraph::graph::DiGraph;

use super::planner::PlannedView;
use super::validate::RelationRef;

/// Dependencies among the planned views (indices into the plan).
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    /// Every dependency found, cycles included: for the graph operators of selection.
    pub upstream: Vec<Vec<usize>>,
    /// The dependencies the scheduler honours: those inside a cycle removed.
    pub acyclic: Graph,
    /// Each cycle's members, in plan order.
    pub cycles: Vec<Vec<usize>>,
}

impl Dependencies {
    /// `i` and everything it reads, directly or not.
    pub fn with_upstream(&self, i: usize) -> Vec<usize> {
        walk(i, &self.upstream)
    }

    /// `i` and everything that reads it, directly or not.
    pub fn with_downstream(&self, i: usize) -> Vec<usize> {
        let mut down = vec![Vec::new(); self.upstream.len()];
        for (d, ups) in self.upstream.iter().enumerate() {
            for &u in ups {
                down[u].push(d);
            }
        }
        walk(i, &down)
    }

    /// The graph restricted to `keep` (old indices, in the new order), edges to views outside
    /// it dropped: a view whose upstream is not selected just runs.
    pub fn restrict(&self, keep: &[usize]) -> Graph {
        let new_index: HashMap<usize, usize> =
            keep.iter().enumerate().map(|(n, &o)| (o, n)).collect();
        Graph {
            upstream: keep
                .iter()
                .map(|&o| {
                    self.acyclic.upstream[o]
                        .iter()
                        .filter_map(|u| new_index.get(u).copied())
                        .collect()
                })
                .collect(),
        }
    }
}

fn walk(start: usize, edges: &[Vec<usize>]) -> Vec<usize> {
    let mut seen = vec![false; edges.len()];
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(i) = stack.pop() {
        if i >= seen.len() || seen[i] {
            continue;
        }
        seen[i] = true;
        out.push(i);
        stack.extend(edges[i].iter().copied());
    }
    out.sort_unstable();
    out
}

/// Builds the graph. `reads[i]` are the relations view `i`'s query reads; an unqualified name is
/// resolved as PostgreSQL resolves it: in the first schema of `search_path` (the schemas the
/// tool's session resolves names in) that has a relation of that name, a managed view (built or
/// to be built) or any relation in `existing` (`schema.name`; a table there shadows a managed
/// view further down the path, and the name reads no managed view). `catalog` are (reader, read)
/// pairs of `schema.name` keys from `pg_depend`, for views built from their current query.
pub fn build(
    views: &[PlannedView],
    reads: &[Vec<RelationRef>],
    catalog: &[(String, String)],
    search_path: &[String],
    existing: &std::collections::HashSet<String>,
) -> Dependencies {
    // Invalid manifests are nodes too: a view reading one whose query no longer validates
    // must wait for it, and be skipped when it fails, not refreshed from its stale contents.
    let index: HashMap<&str, usize> = views
        .iter()
        .enumerate()
        .map(|(i, v)| (v.key.as_str(), i))
        .collect();
    let mut upstream: Vec<Vec<usize>> = vec![Vec::new(); views.len()];
    let mut add = |d: usize, u: usize| {
        if !upstream[d].contains(&u) {
            upstream[d].push(u);
        }
    };
    for (d, rels) in reads.iter().enumerate().take(views.len()) {
        for r in rels {
            let found = match &r.schema {
                Some(schema) => index.get(format!("{schema}.{}", r.name).as_str()).copied(),
                None => search_path
                    .iter()
                    .map(|schema| format!("{schema}.{}", r.name))
                    .find(|key| index.contains_key(key.as_str()) || existing.contains(key))
                    .and_then(|key| index.get(key.as_str()).copied()),
            };
            if let Some(u) = found {
                add(d, u);
            }
        }
    }
    for (reader, read) in catalog {
        if let (Some(&d), Some(&u)) = (index.get(reader.as_str()), index.get(read.as_str())) {
            add(d, u);
        }
    }
    for ups in &mut upstream {
        ups.sort_unstable();
    }

    let mut g: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<_> = (0..views.len()).map(|i| g.add_node(i)).collect();
    for (d, ups) in upstream.iter().enumerate() {
        for &u in ups {
            g.add_edge(nodes[u], nodes[d], ());
        }
    }
    let mut cycles: Vec<Vec<usize>> = tarjan_scc(&g)
        .into_iter()
        .map(|scc| {
            let mut members: Vec<usize> = scc.into_iter().map(|n| g[n]).collect();
            members.sort_unstable();
            members
        })
        .filter(|m| m.len() > 1 || upstream[m[0]].contains(&m[0]))
        .collect();
    cycles.sort();
    let mut cycle_of = vec![None; views.len()];
    for (c, members) in cycles.iter().enumerate() {
        for &m in members {
            cycle_of[m] = Some(c);
        }
    }
    let acyclic = Graph {
        upstream: upstream
            .iter()
            .enumerate()
            .map(|(d, ups)| {
                ups.iter()
                    .copied()
                    .filter(|&u| cycle_of[d].is_none() || cycle_of[d] != cycle_of[u])
                    .collect()
            })
            .collect(),
    };
    Dependencies {
        upstream,
        acyclic,
        cycles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::planner::{plan, Selection};
    use crate::repositories::{ManifestRow, ReportType};

    fn views(tables: &[&str]) -> Vec<PlannedView> {
        let rows: Vec<ManifestRow> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| ManifestRow {
                report_type: ReportType::Custom,
                manifest_id: i as i64 + 1,
                report_id: None,
                table_name: t.to_string(),
                report_name: t.to_string(),
                agency_id: 1,
                agency_slug: "gotham".into(),
                query: format!("SELECT {i} AS id"),
                enabled: true,
                statement_timeout: None,
                lock_timeout: None,
            })
            .collect();
        plan(&rows, &Selection::default()).unwrap().views
    }

    fn r(schema: Option<&str>, name: &str) -> RelationRef {
        RelationRef {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        }
    }

    #[test]
    fn parsed_and_catalog_edges_between_managed_views() {
        let v = views(&[
            "reporting.stg",
            "reporting.rollup",
            "public.helper",
            "reporting.other",
        ]);
        let reads = vec![
            vec![r(Some("public"), "raw_table")],
            vec![r(Some("reporting"), "stg"), r(None, "helper")],
            vec![],
            vec![],
        ];
        let catalog = vec![("reporting.other".to_string(), "reporting.stg".to_string())];
        let d = build(&v, &reads, &catalog, &["public".to_string()], &none());
        assert_eq!(d.upstream, vec![vec![], vec![0, 2], vec![], vec![0]]);
        assert!(d.cycles.is_empty());
        assert_eq!(d.with_downstream(0), vec![0, 1, 3]);
        assert_eq!(d.with_upstream(1), vec![0, 1, 2]);
    }

    #[test]
    fn unqualified_names_follow_the_search_path() {
        let v = views(&["reporting.stg", "public.stg", "reporting.reader"]);
        let reads = vec![vec![], vec![], vec![r(None, "stg")]];
        let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            build(&v, &reads, &[], &path(&["reporting", "public"]), &none()).upstream[2],
            vec![0]
        );
        assert_eq!(
            build(&v, &reads, &[], &path(&["public", "reporting"]), &none()).upstream[2],
            vec![1]
        );
        assert!(build(&v, &reads, &[], &path(&["other"]), &none()).upstream[2].is_empty());
        // A table `other.stg` first on the path shadows both: the name reads no managed view.
        let table: std::collections::HashSet<String> = ["other.stg".to_string()].into();
        assert!(
            build(&v, &reads, &[], &path(&["other", "reporting"]), &table).upstream[2].is_empty()
        );
        // One after the managed view does not.
        assert_eq!(
            build(&v, &reads, &[], &path(&["reporting", "other"]), &table).upstream[2],
            vec![0]
        );
    }

    fn none() -> std::collections::HashSet<String> {
        std::collections::HashSet::new()
    }

    #[test]
    fn cycles_are_found_once_and_cut_from_the_schedule() {
        let v = views(&["s.a", "s.b", "s.c", "s.d", "s.self"]);
        let reads = vec![
            vec![r(Some("s"), "c")],
            vec![r(Some("s"), "a")],
            vec![r(Some("s"), "b")],
            vec![r(Some("s"), "a")],
            vec![r(Some("s"), "self")],
        ];
        let d = build(&v, &reads, &[], &["public".to_string()], &none());
        assert_eq!(d.cycles, vec![vec![0, 1, 2], vec![4]]);
        // Inside the cycle no edge is kept; the view reading a cycle member still waits for it.
        assert_eq!(
            d.acyclic.upstream,
            vec![vec![], vec![], vec![], vec![0], vec![]]
        );
    }

    #[test]
    fn restrict_keeps_edges_among_the_selected_only() {
        let v = views(&["s.a", "s.b", "s.c"]);
        let reads = vec![vec![], vec![r(Some("s"), "a")], vec![r(Some("s"), "b")]];
        let d = build(&v, &reads, &[], &["public".to_string()], &none());
        let g = d.restrict(&[2, 1]);
        assert_eq!(g.upstream, vec![vec![1], vec![]]);
    }
}
