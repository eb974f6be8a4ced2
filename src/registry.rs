//! Discovering declared reactors and graphs, and scoped registries.
//!
//! `#[reactor]` and `#[computation_graph]` submit an entry at link time ([`ReactorEntry`],
//! [`GraphEntry`]); [`Registry::from_declarations`] collects every one in the binary, with no
//! manual call per declaration. A [`Registry`] is an ordinary value: build one from the
//! declarations, or start empty and register explicitly, and two registries in one process
//! never see each other's entries.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::graph::{BuildError, CompiledGraph, GraphBuilder, SourceName};
use crate::reactor::ReactionCriteria;
use crate::EmbeddedGraph;

/// A reactor declared with `#[reactor]` (link-time entry).
#[derive(Debug)]
pub struct ReactorEntry {
    /// Reactor name.
    pub name: &'static str,
    /// Sources its accumulators feed.
    pub accumulators: &'static [&'static str],
    /// Its criteria.
    pub criteria: fn() -> ReactionCriteria,
    /// Where it is declared (file, line, column).
    pub site: Site,
}

/// Where a declaration is: file, line, column.
pub type Site = (&'static str, u32, u32);

/// A graph declared with `#[computation_graph]` (link-time entry).
#[derive(Debug)]
pub struct GraphEntry {
    /// Graph name.
    pub name: &'static str,
    /// Reactor it is bound to; `None` for trigger-less graphs.
    pub trigger: Option<&'static str>,
    /// Builds the graph.
    pub build: fn() -> Result<CompiledGraph, BuildError>,
    /// Adds its nodes, name-prefixed, to a builder (combining graphs on one reactor).
    pub add_to: AddToFn,
    /// Where it is declared (file, line, column): declaration order within a file; files
    /// are taken in path order.
    pub site: Site,
}

/// Adds a graph's nodes to a builder, each name prefixed.
pub type AddToFn = fn(GraphBuilder, &str) -> GraphBuilder;

inventory::collect!(ReactorEntry);
inventory::collect!(GraphEntry);

/// Workflows declared with `#[workflow]` live in the workflow layer (the runner finds them
/// there); re-exported here beside the other declarations.
pub use crate::workflow::{
    declared_schedules, declared_workflow, declared_workflows, DeclaredSchedule, WorkflowEntry,
};

/// The trigger-less graph `name` declared with `#[computation_graph]` (no `trigger`) in this
/// binary, built once and shared; what `#[task(invokes = "name")]` runs. An error names the
/// graph: not declared, bound to a reactor, or invalid.
pub fn declared_triggerless_graph(name: &str) -> Result<Arc<CompiledGraph>, String> {
    static BUILT: std::sync::Mutex<BTreeMap<&'static str, Arc<CompiledGraph>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let mut found = inventory::iter::<GraphEntry>
        .into_iter()
        .filter(|e| e.name == name);
    let entry = found
        .next()
        .ok_or_else(|| format!("no computation graph `{name}` is declared in this binary"))?;
    if let Some(other) = found.next() {
        return Err(format!(
            "graph `{name}` is declared twice ({}:{} and {}:{})",
            entry.site.0, entry.site.1, other.site.0, other.site.1
        ));
    }
    if let Some(reactor) = entry.trigger {
        return Err(format!(
            "graph `{name}` is bound to reactor `{reactor}`; a task can invoke only a trigger-less graph"
        ));
    }
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(graph) = built.get(entry.name) {
        return Ok(Arc::clone(graph));
    }
    let graph = Arc::new((entry.build)().map_err(|e| format!("graph `{name}`: {e}"))?);
    built.insert(entry.name, Arc::clone(&graph));
    Ok(graph)
}

/// A reactor declaration held by a [`Registry`].
#[derive(Debug, Clone)]
pub struct ReactorDecl {
    name: String,
    accumulators: Vec<SourceName>,
    criteria: ReactionCriteria,
}

impl ReactorDecl {
    /// A reactor named `name` fed by `accumulators`, firing on `criteria`.
    pub fn new(name: &str, accumulators: &[&str], criteria: ReactionCriteria) -> Self {
        Self {
            name: name.to_owned(),
            accumulators: accumulators.iter().map(SourceName::new).collect(),
            criteria,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sources its accumulators feed.
    pub fn accumulators(&self) -> &[SourceName] {
        &self.accumulators
    }

    /// Its criteria.
    pub fn criteria(&self) -> &ReactionCriteria {
        &self.criteria
    }
}

/// A graph declaration held by a [`Registry`].
#[derive(Debug, Clone)]
pub struct GraphDecl {
    name: String,
    trigger: Option<String>,
    build: fn() -> Result<CompiledGraph, BuildError>,
    add_to: Option<AddToFn>,
}

impl GraphDecl {
    /// A graph named `name`, bound to reactor `trigger` (or trigger-less), built by `build`.
    pub fn new(
        name: &str,
        trigger: Option<&str>,
        build: fn() -> Result<CompiledGraph, BuildError>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            trigger: trigger.map(str::to_owned),
            build,
            add_to: None,
        }
    }

    /// Lets the graph be combined with others bound to the same reactor (see
    /// [`Registry::embedded_reactor`]); `#[computation_graph]` declarations do this.
    pub fn combinable(mut self, add_to: AddToFn) -> Self {
        self.add_to = Some(add_to);
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reactor it is bound to.
    pub fn trigger(&self) -> Option<&str> {
        self.trigger.as_deref()
    }

    /// Builds a fresh copy of the graph.
    pub fn build(&self) -> Result<CompiledGraph, BuildError> {
        (self.build)()
    }
}

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two declarations in the binary share a name.
    #[error("{kind} `{name}` is declared twice: at {first} and at {second}")]
    DuplicateDeclaration {
        /// "reactor" or "graph".
        kind: &'static str,
        /// The name.
        name: String,
        /// First declaration (file:line:column).
        first: String,
        /// Second declaration.
        second: String,
    },
    /// The reactor has an accumulator no graph reads (the engine would refuse it).
    #[error(
        "reactor `{reactor}` has accumulator `{source_name}`, which graph `{graph}` does not read"
    )]
    AccumulatorNotRead {
        /// Graph (or reactor name for combined graphs).
        graph: String,
        /// Reactor.
        reactor: String,
        /// The source.
        source_name: SourceName,
    },
    /// A name is registered twice.
    #[error("{kind} `{name}` is already registered")]
    Duplicate {
        /// "reactor" or "graph".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// No graph of that name.
    #[error("no graph `{0}` in this registry")]
    UnknownGraph(String),
    /// The graph names a reactor the registry does not have.
    #[error("graph `{graph}` is bound to reactor `{reactor}`, which is not registered")]
    UnknownReactor {
        /// Graph.
        graph: String,
        /// Reactor it names.
        reactor: String,
    },
    /// The graph reads a source its reactor has no accumulator for.
    #[error("graph `{graph}` reads source `{source_name}`, but reactor `{reactor}` has no such accumulator")]
    SourceNotFed {
        /// Graph.
        graph: String,
        /// Reactor.
        reactor: String,
        /// The source.
        source_name: SourceName,
    },
    /// No reactor of that name.
    #[error("no reactor `{0}` in this registry")]
    UnknownReactorName(String),
    /// The reactor has no graph bound to it.
    #[error("reactor `{0}` has no graph bound to it")]
    NoGraphs(String),
    /// A graph cannot be combined with others (registered by `build` alone).
    #[error("graph `{0}` cannot be combined with other graphs (register it with `GraphDecl::combinable`)")]
    NotCombinable(String),
    /// The graph declaration is invalid.
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Reactors and graphs by name. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    reactors: BTreeMap<String, ReactorDecl>,
    graphs: BTreeMap<String, GraphDecl>,
    /// Graph names in registration order (declaration order for declared graphs).
    graph_order: Vec<String>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every reactor and graph declared with the macros in this binary (and in dependencies
    /// the binary references: the linker drops crates nothing uses). Graphs are taken in
    /// declaration order: by file, then line. Two declarations of one name are an error
    /// naming both places.
    pub fn from_declarations() -> Result<Self, RegistryError> {
        let mut registry = Self::new();
        let at = |site: Site| format!("{}:{}:{}", site.0, site.1, site.2);
        let mut reactors: Vec<&ReactorEntry> =
            inventory::iter::<ReactorEntry>.into_iter().collect();
        reactors.sort_by_key(|r| r.site);
        for (i, r) in reactors.iter().enumerate() {
            if let Some(first) = reactors[..i].iter().find(|o| o.name == r.name) {
                return Err(RegistryError::DuplicateDeclaration {
                    kind: "reactor",
                    name: r.name.to_owned(),
                    first: at(first.site),
                    second: at(r.site),
                });
            }
        }
        for r in reactors {
            registry.register_reactor(ReactorDecl::new(r.name, r.accumulators, (r.criteria)()))?;
        }
        // Link order is arbitrary; declaration order (file, line, column) is not.
        let mut graphs: Vec<&GraphEntry> = inventory::iter::<GraphEntry>.into_iter().collect();
        graphs.sort_by_key(|g| g.site);
        for (i, g) in graphs.iter().enumerate() {
            if let Some(first) = graphs[..i].iter().find(|o| o.name == g.name) {
                return Err(RegistryError::DuplicateDeclaration {
                    kind: "graph",
                    name: g.name.to_owned(),
                    first: at(first.site),
                    second: at(g.site),
                });
            }
        }
        for g in graphs {
            registry
                .register_graph(GraphDecl::new(g.name, g.trigger, g.build).combinable(g.add_to))?;
        }
        Ok(registry)
    }

    /// Adds a reactor.
    pub fn register_reactor(&mut self, decl: ReactorDecl) -> Result<(), RegistryError> {
        if self.reactors.contains_key(&decl.name) {
            return Err(RegistryError::Duplicate {
                kind: "reactor",
                name: decl.name,
            });
        }
        self.reactors.insert(decl.name.clone(), decl);
        Ok(())
    }

    /// Adds a graph.
    pub fn register_graph(&mut self, decl: GraphDecl) -> Result<(), RegistryError> {
        if self.graphs.contains_key(&decl.name) {
            return Err(RegistryError::Duplicate {
                kind: "graph",
                name: decl.name,
            });
        }
        self.graph_order.push(decl.name.clone());
        self.graphs.insert(decl.name.clone(), decl);
        Ok(())
    }

    /// Removes a graph; returns whether it was there.
    pub fn unregister_graph(&mut self, name: &str) -> bool {
        self.graph_order.retain(|g| g != name);
        self.graphs.remove(name).is_some()
    }

    /// Removes a reactor; returns whether it was there.
    pub fn unregister_reactor(&mut self, name: &str) -> bool {
        self.reactors.remove(name).is_some()
    }

    /// The reactor named `name`.
    pub fn reactor(&self, name: &str) -> Option<&ReactorDecl> {
        self.reactors.get(name)
    }

    /// The graph named `name`.
    pub fn graph(&self, name: &str) -> Option<&GraphDecl> {
        self.graphs.get(name)
    }

    /// Reactor names, sorted.
    pub fn reactor_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.reactors.keys().map(String::as_str)
    }

    /// Graph names, sorted.
    pub fn graph_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.graphs.keys().map(String::as_str)
    }

    /// Graphs bound to reactor `reactor`, in registration (declaration) order.
    pub fn graphs_of<'a>(&'a self, reactor: &'a str) -> impl Iterator<Item = &'a GraphDecl> + 'a {
        self.graph_order
            .iter()
            .filter_map(|name| self.graphs.get(name))
            .filter(move |g| g.trigger.as_deref() == Some(reactor))
    }

    /// Starts an [`EmbeddedGraph`] for reactor `reactor` running every graph bound to it: one
    /// compiled graph holding each bound graph's nodes, named `graph::node`, in declaration
    /// order, so every graph runs once per reactor firing, in that order, on the same cache.
    /// They share one firing: if a node of one graph fails, the firing reports that error and
    /// the graphs after it do not run for that firing.
    /// Every source any of them reads must be one of the reactor's accumulators, and every
    /// accumulator must be read by one of them.
    pub fn embedded_reactor(
        &self,
        reactor: &str,
    ) -> Result<crate::EmbeddedGraphBuilder, RegistryError> {
        let decl = self
            .reactors
            .get(reactor)
            .ok_or_else(|| RegistryError::UnknownReactorName(reactor.to_owned()))?;
        let mut builder = GraphBuilder::new(reactor);
        let mut bound = 0;
        for graph in self.graphs_of(reactor) {
            let add_to = graph
                .add_to
                .ok_or_else(|| RegistryError::NotCombinable(graph.name.clone()))?;
            // Checked per graph, so an error names the graph that reads the source.
            check_sources(&graph.name, &graph.build()?, decl, false)?;
            builder = add_to(builder, &format!("{}::", graph.name));
            bound += 1;
        }
        if bound == 0 {
            return Err(RegistryError::NoGraphs(reactor.to_owned()));
        }
        let graph = Arc::new(builder.build()?);
        check_sources(reactor, &graph, decl, true)?;
        Ok(EmbeddedGraph::builder(graph)
            .name(decl.name.clone())
            .criteria(decl.criteria.clone()))
    }

    /// Starts an [`EmbeddedGraph`] for graph `name`: the graph is built, and when it is bound
    /// to a reactor, the reactor's name and criteria are applied and every source the graph
    /// reads is checked against the reactor's accumulators. Add the accumulators, then start.
    pub fn embedded(&self, name: &str) -> Result<crate::EmbeddedGraphBuilder, RegistryError> {
        let decl = self
            .graphs
            .get(name)
            .ok_or_else(|| RegistryError::UnknownGraph(name.to_owned()))?;
        let graph = Arc::new(decl.build()?);
        let Some(trigger) = decl.trigger() else {
            return Ok(EmbeddedGraph::builder(graph));
        };
        let reactor = self
            .reactors
            .get(trigger)
            .ok_or_else(|| RegistryError::UnknownReactor {
                graph: name.to_owned(),
                reactor: trigger.to_owned(),
            })?;
        check_sources(name, &graph, reactor, true)?;
        Ok(EmbeddedGraph::builder(graph)
            .name(reactor.name.clone())
            .criteria(reactor.criteria.clone()))
    }
}

/// Checks a graph's sources against a reactor's accumulators: every source read must be fed;
/// with `exact`, every accumulator must also be read (the engine refuses unread ones).
fn check_sources(
    graph_name: &str,
    graph: &CompiledGraph,
    reactor: &ReactorDecl,
    exact: bool,
) -> Result<(), RegistryError> {
    if let Some(unfed) = graph
        .sources()
        .iter()
        .find(|s| !reactor.accumulators.contains(&s.name))
    {
        return Err(RegistryError::SourceNotFed {
            graph: graph_name.to_owned(),
            reactor: reactor.name.clone(),
            source_name: unfed.name.clone(),
        });
    }
    if exact {
        if let Some(unread) = reactor
            .accumulators
            .iter()
            .find(|a| !graph.sources().iter().any(|s| &s.name == *a))
        {
            return Err(RegistryError::AccumulatorNotRead {
                graph: graph_name.to_owned(),
                reactor: reactor.name.clone(),
                source_name: unread.clone(),
            });
        }
    }
    Ok(())
}
