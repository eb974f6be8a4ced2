//! # cloacina-macros
//!
//! Declarative front ends for cloacina's computation graphs. They expand to the builder API
//! of `cloacina-graph-core` (there is no second engine) and reject invalid declarations at
//! compile time, with the error on the offending name:
//!
//! - `#[reactor(name = "...", accumulators = [a, b], criteria = when_any(a, b))]` on a struct:
//!   names a reactor, its accumulators and its reaction criteria (`when_any` / `when_all`,
//!   with no list meaning every accumulator), and registers it at startup.
//! - `#[computation_graph(trigger = reactor("..."), graph = { ... })]` on an inline module of
//!   node functions: declares the topology, checks it (cycles, nodes without a function,
//!   functions outside the topology, no entry node, unknown routing variants, inputs and
//!   outputs whose types do not line up), generates `graph()` / `build()` and registers it.
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
//! `expand_reactor` / `expand_graph` generate the code.

mod expand_graph;
mod expand_reactor;
mod parse;
mod validate;

use proc_macro::TokenStream;
use syn::{Ident, ItemMod};

use crate::parse::{GraphArgs, ReactorArgs};

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
