//! The in-memory route table: which function answers a method and path. Rebuilt whole on every
//! deploy and swapped in atomically, so a request sees either the old or the new table.

use crate::live::LiveFunction;
use nubo_manifest::Route;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct RouteTable {
    functions: HashMap<String, Arc<LiveFunction>>,
    exact: HashMap<String, Vec<(Route, String)>>,
    /// Longest prefix first.
    prefixes: Vec<(Route, String)>,
}

/// The outcome of a lookup.
pub enum Lookup {
    Found(Arc<LiveFunction>),
    /// The path is routed, but not for this method.
    MethodNotAllowed(Vec<String>),
    NotFound,
}

impl RouteTable {
    pub fn new(functions: Vec<Arc<LiveFunction>>) -> RouteTable {
        let mut t = RouteTable::default();
        for f in functions {
            for r in &f.spec.routes {
                match r.prefix() {
                    Some(_) => t.prefixes.push((r.clone(), f.name.clone())),
                    None => t
                        .exact
                        .entry(r.path.clone())
                        .or_default()
                        .push((r.clone(), f.name.clone())),
                }
            }
            t.functions.insert(f.name.clone(), f);
        }
        t.prefixes
            .sort_by_key(|(r, _)| std::cmp::Reverse(r.path.len()));
        t
    }

    pub fn function(&self, name: &str) -> Option<&Arc<LiveFunction>> {
        self.functions.get(name)
    }

    pub fn functions(&self) -> impl Iterator<Item = &Arc<LiveFunction>> {
        self.functions.values()
    }

    /// The most specific route wins: an exact path over any prefix, a longer prefix over a
    /// shorter one; among routes of equal path, the one whose methods include this one.
    pub fn lookup(&self, method: &str, path: &str) -> Lookup {
        let mut allowed = Vec::new();
        if let Some(routes) = self.exact.get(path) {
            if let Some((_, f)) = routes.iter().find(|(r, _)| r.allows(method)) {
                return self.found(f);
            }
            routes
                .iter()
                .for_each(|(r, _)| allowed.extend(r.methods.iter().cloned()));
        }
        let mut matched_len = None;
        for (r, f) in &self.prefixes {
            let prefix = r.prefix().unwrap_or_default();
            // `/api/*` matches `/api/x` and `/api` itself.
            let matches = path.starts_with(prefix) || path == prefix.trim_end_matches('/');
            if !matches || matched_len.is_some_and(|l| l > prefix.len()) {
                continue;
            }
            if r.allows(method) {
                return self.found(f);
            }
            matched_len = Some(prefix.len());
            allowed.extend(r.methods.iter().cloned());
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            allowed.sort();
            allowed.dedup();
            Lookup::MethodNotAllowed(allowed)
        }
    }

    fn found(&self, name: &str) -> Lookup {
        match self.functions.get(name) {
            Some(f) => Lookup::Found(f.clone()),
            None => Lookup::NotFound,
        }
    }
}
