//! # cloacina-macros
//!
//! Declarative front ends for cloacina's computation graphs and workflows. They expand to
//! the builder APIs of `cloacina-graph-core` and `cloacina-workflow-layer` (there is no
//! second engine) and reject invalid declarations at compile time, with the error on the
//! offending name:
//!
//! - `#[reactor(name = "...", accumulators = [a, b], criteria = when_any(a, b))]` on a struct:
//!   names a reactor, its accumulators and its reaction criteria (`when_any` / `when_all`,
//!   with no list meaning every accumulator), and registers it at startup.
//! - `#[computation_graph(trigger = reactor("..."), graph = { ... })]` on an inline module of
//!   node functions: declares the topology, checks it (cycles, nodes without a function,
//!   functions outside the topology, no entry node, unknown routing variants, inputs and
//!   outputs whose types do not line up), generates `graph()` / `build()` and registers it.
//! - `#[task(...)]` on an `async fn(&mut Context<Value>) -> Result<(), TaskError>`: adds a
//!   unit struct `<fn>_task` implementing `Task` (retries, trigger rules, timeout from the
//!   keys; unknown keys and rules naming non-dependencies are errors).
//! - `#[workflow(name, description)]` on an inline module of `#[task]` functions: checks the
//!   task DAG with `cloacina-topology` (duplicates, unknown dependencies, cycles), generates
//!   `NAME` / `workflow()` and registers it.
//!
//! Topology grammar, one statement per comma:
//!
//! ```text
//! entry(source_a, source_b) -> next -> last      // cache inputs in parentheses, then a chain
//! decide(quotes) => { Trade -> execute, Hold -> audit }   // enum routing: only one arm runs
//! a -> merge, b -> merge                          // fan-in: merge(a: &A, b: &B)
//! ```
//!
//! A node's function takes its cache inputs first (`Option<&T>`, in the order listed in
//! parentheses), then one `&T` per upstream, in the order the edges into it first appear.
//! A routed edge passes the variant's single payload (`Trade(TradeSignal)` gives
//! `&TradeSignal`).
//!
//! `#[node(blocking)]` on a plain node function runs it as a blocking node (CPU-heavy work
//! that must not stall other tasks). Each graph module gains `NAME`, `TRIGGER`, `build()`,
//! `graph()` (built once), `add_to(builder, prefix)` (to combine the graphs bound to one
//! reactor) and `declaration()`; each reactor struct gains `NAME`, `ACCUMULATORS`,
//! `criteria()` and `declaration()`.
//!
//! Restrictions, each a compile error that says so: a routed variant carries exactly one
//! tuple field (`Trade(Signal)`); a node takes at most 8 inputs; the module may not define
//! the generated names (`NAME`, `TRIGGER`, `build`, `graph`, `add_to`, `declaration`, or
//! anything starting with `__cloacina`); `#[node(blocking)]` is for plain, non-routing nodes.
//!
//! The generated code refers to the `cloacina` facade crate, which re-exports these macros.
//!
//! Layout: `parse` reads the attributes and the topology, `validate` checks the topology with
//! `cloacina-topology` (the rules `GraphBuilder::build` applies at run time), and
//! `expand_reactor` / `expand_graph` generate the code; `task_attr` and `workflow_attr` hold
//! the workflow macros.

mod expand_graph;
mod expand_reactor;
mod parse;
mod task_attr;
mod validate;
mod workflow_attr;

use proc_macro::TokenStream;
use syn::{Ident, ItemMod};

use crate::parse::{GraphArgs, ReactorArgs};

/// The name an item of a module declares, if it declares one a macro could clash with.
fn item_ident(item: &syn::Item) -> Option<&Ident> {
    match item {
        syn::Item::Fn(f) => Some(&f.sig.ident),
        syn::Item::Const(c) => Some(&c.ident),
        syn::Item::Static(c) => Some(&c.ident),
        syn::Item::Struct(c) => Some(&c.ident),
        syn::Item::Enum(c) => Some(&c.ident),
        syn::Item::Type(c) => Some(&c.ident),
        syn::Item::Mod(c) => Some(&c.ident),
        _ => None,
    }
}

/// The runtime name of an identifier (`r#type` is named `type`).
fn name_of(ident: &Ident) -> String {
    use syn::ext::IdentExt;
    ident.unraw().to_string()
}

/// Declares a reactor: its name, accumulators and reaction criteria. See the crate docs.
#[proc_macro_attribute]
pub fn reactor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(attr as ReactorArgs);
    let item = syn::parse_macro_input!(item as syn::ItemStruct);
    match expand_reactor::expand_reactor(args, item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Declares a computation graph over the functions of an inline module. See the crate docs.
#[proc_macro_attribute]
pub fn computation_graph(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(attr as GraphArgs);
    let module = syn::parse_macro_input!(item as ItemMod);
    match expand_graph::expand_graph(args, module) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Declares a workflow task on an `async fn name(ctx: &mut Context<Value>) -> Result<(),
/// TaskError>`: keys `id` (default: the function's name), `dependencies = ["a", ..]`,
/// `retry_policy = <expr>` or the shorthand `retry_attempts` / `retry_backoff` (`"fixed"`,
/// `"linear"`, `"exponential"`) / `retry_delay_ms`, `trigger_rules = all(task_success("a"),
/// context_value("score", greater_than, 80))`, `timeout = <Duration expr>`, `invokes =
/// "graph"` (after the function, runs that trigger-less `#[computation_graph]` on the context
/// and merges its terminal outputs). Generates a unit struct `<name>_task` implementing `Task`.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let tokens = proc_macro2::TokenStream::from(attr.clone());
    let args = syn::parse_macro_input!(attr as task_attr::TaskArgs);
    let function = syn::parse_macro_input!(item as syn::ItemFn);
    match task_attr::expand_task(&tokens, args, function) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Declares a workflow over the `#[task]` functions of an inline module (`name`,
/// `description`): checks its DAG at compile time, generates `NAME` and `workflow()`, and
/// registers it at startup.
#[proc_macro_attribute]
pub fn workflow(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(attr as workflow_attr::WorkflowArgs);
    let module = syn::parse_macro_input!(item as ItemMod);
    match workflow_attr::expand_workflow(args, module) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}
