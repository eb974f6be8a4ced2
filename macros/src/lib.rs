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

use std::collections::{BTreeMap, HashMap, HashSet};

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    braced, bracketed, parenthesized, FnArg, GenericArgument, Ident, Item, ItemFn, ItemMod, LitStr,
    PathArguments, ReturnType, Token, Type,
};

/// The runtime name of an identifier (`r#type` is named `type`).
fn name_of(ident: &Ident) -> String {
    use syn::ext::IdentExt;
    ident.unraw().to_string()
}

/// Items the macro generates in a graph module; a user item of the same name would clash.
const RESERVED: [&str; 6] = ["NAME", "TRIGGER", "build", "graph", "add_to", "declaration"];

/// Most inputs a node takes (the builder's argument tuples stop at 8).
const MAX_INPUTS: usize = 8;

// ------------------------------------------------------------------------------------------
// #[reactor]
// ------------------------------------------------------------------------------------------

enum CriteriaKind {
    Any,
    All,
}

struct CriteriaArg {
    kind: CriteriaKind,
    sources: Option<Vec<Ident>>,
}

impl Parse for CriteriaArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mode: Ident = input.parse()?;
        let kind = match mode.to_string().as_str() {
            "when_any" => CriteriaKind::Any,
            "when_all" => CriteriaKind::All,
            other => {
                return Err(syn::Error::new(
                    mode.span(),
                    format!("unknown reaction criteria `{other}`: expected `when_any(..)` or `when_all(..)`"),
                ))
            }
        };
        let sources = if input.peek(syn::token::Paren) {
            let content;
            parenthesized!(content in input);
            let list: Punctuated<Ident, Token![,]> = Punctuated::parse_terminated(&content)?;
            let list: Vec<Ident> = list.into_iter().collect();
            (!list.is_empty()).then_some(list)
        } else {
            None
        };
        Ok(Self { kind, sources })
    }
}

struct ReactorArgs {
    name: LitStr,
    accumulators: Vec<Ident>,
    criteria: Option<CriteriaArg>,
}

impl Parse for ReactorArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut name = None;
        let mut accumulators = None;
        let mut criteria = None;
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            match key.to_string().as_str() {
                "name" => {
                    if name.is_some() {
                        return Err(syn::Error::new(key.span(), "duplicate `name`"));
                    }
                    name = Some(input.parse::<LitStr>()?);
                }
                "accumulators" => {
                    if accumulators.is_some() {
                        return Err(syn::Error::new(key.span(), "duplicate `accumulators`"));
                    }
                    let content;
                    bracketed!(content in input);
                    let list: Punctuated<Ident, Token![,]> =
                        Punctuated::parse_terminated(&content)?;
                    accumulators = Some(list.into_iter().collect::<Vec<_>>());
                }
                "criteria" => {
                    if criteria.is_some() {
                        return Err(syn::Error::new(key.span(), "duplicate `criteria`"));
                    }
                    criteria = Some(input.parse::<CriteriaArg>()?);
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown #[reactor] key `{other}`: expected `name`, `accumulators` or `criteria`"),
                    ))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        let name = name.ok_or_else(|| input.error("#[reactor] needs `name = \"...\"`"))?;
        let accumulators =
            accumulators.ok_or_else(|| input.error("#[reactor] needs `accumulators = [..]`"))?;
        if accumulators.is_empty() {
            return Err(syn::Error::new(
                name.span(),
                "a reactor needs at least one accumulator",
            ));
        }
        Ok(Self {
            name,
            accumulators,
            criteria,
        })
    }
}

/// Declares a reactor: its name, accumulators and reaction criteria. See the crate docs.
#[proc_macro_attribute]
pub fn reactor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(attr as ReactorArgs);
    let item = syn::parse_macro_input!(item as syn::ItemStruct);
    match expand_reactor(args, item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_reactor(args: ReactorArgs, item: syn::ItemStruct) -> syn::Result<TokenStream2> {
    let mut seen = HashSet::new();
    for acc in &args.accumulators {
        if !seen.insert(acc.to_string()) {
            return Err(syn::Error::new(
                acc.span(),
                format!("accumulator `{acc}` is listed twice"),
            ));
        }
    }
    let (all, sources) = match &args.criteria {
        None => (false, None),
        Some(c) => (matches!(c.kind, CriteriaKind::All), c.sources.as_ref()),
    };
    if let Some(sources) = sources {
        for s in sources {
            if !seen.contains(&s.to_string()) {
                let declared: Vec<String> =
                    args.accumulators.iter().map(|a| a.to_string()).collect();
                return Err(syn::Error::new(
                    s.span(),
                    format!(
                        "criteria source `{s}` is not an accumulator of this reactor (accumulators: {})",
                        declared.join(", ")
                    ),
                ));
            }
        }
    }
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &item.generics,
            "#[reactor] goes on a plain struct without generic parameters",
        ));
    }
    let ident = &item.ident;
    let name = &args.name;
    let accs: Vec<String> = args.accumulators.iter().map(name_of).collect();
    let criteria = match (all, sources) {
        (false, None) => quote!(::cloacina::reactor::ReactionCriteria::when_any()),
        (true, None) => quote!(::cloacina::reactor::ReactionCriteria::when_all()),
        (false, Some(list)) => {
            let list: Vec<String> = list.iter().map(name_of).collect();
            quote!(::cloacina::reactor::ReactionCriteria::when_any_of([#(#list),*]))
        }
        (true, Some(list)) => {
            let list: Vec<String> = list.iter().map(name_of).collect();
            quote!(::cloacina::reactor::ReactionCriteria::when_all_of([#(#list),*]))
        }
    };
    let criteria_fn = format_ident!("__cloacina_criteria_{}", ident);
    Ok(quote! {
        #item

        impl #ident {
            /// The reactor's name.
            pub const NAME: &'static str = #name;
            /// The sources its accumulators feed.
            pub const ACCUMULATORS: &'static [&'static str] = &[#(#accs),*];
            /// Its reaction criteria.
            pub fn criteria() -> ::cloacina::reactor::ReactionCriteria {
                #criteria
            }
            /// Its declaration, for a [`cloacina::registry::Registry`].
            pub fn declaration() -> ::cloacina::registry::ReactorDecl {
                ::cloacina::registry::ReactorDecl::new(#name, &[#(#accs),*], #ident::criteria())
            }
        }

        #[allow(non_snake_case)]
        #[doc(hidden)]
        fn #criteria_fn() -> ::cloacina::reactor::ReactionCriteria {
            #ident::criteria()
        }

        ::cloacina::inventory::submit! {
            ::cloacina::registry::ReactorEntry {
                name: #name,
                accumulators: &[#(#accs),*],
                criteria: #criteria_fn,
                site: (::core::file!(), ::core::line!(), ::core::column!()),
            }
        }
    })
}

// ------------------------------------------------------------------------------------------
// #[computation_graph]
// ------------------------------------------------------------------------------------------

struct NodeRef {
    name: Ident,
    sources: Option<Vec<Ident>>,
}

impl Parse for NodeRef {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let name: Ident = input.parse()?;
        let sources = if input.peek(syn::token::Paren) {
            let content;
            parenthesized!(content in input);
            let list: Punctuated<Ident, Token![,]> = Punctuated::parse_terminated(&content)?;
            Some(list.into_iter().collect())
        } else {
            None
        };
        Ok(Self { name, sources })
    }
}

struct Arm {
    variant: Ident,
    chain: Vec<NodeRef>,
}

struct Stmt {
    chain: Vec<NodeRef>,
    arms: Option<Vec<Arm>>,
}

fn parse_chain(input: ParseStream<'_>) -> syn::Result<Vec<NodeRef>> {
    let mut chain = vec![input.parse::<NodeRef>()?];
    while input.peek(Token![->]) {
        input.parse::<Token![->]>()?;
        chain.push(input.parse::<NodeRef>()?);
    }
    Ok(chain)
}

impl Parse for Stmt {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let chain = parse_chain(input)?;
        let arms = if input.peek(Token![=>]) {
            input.parse::<Token![=>]>()?;
            let content;
            braced!(content in input);
            let mut arms = Vec::new();
            while !content.is_empty() {
                let variant: Ident = content.parse()?;
                content.parse::<Token![->]>()?;
                let chain = parse_chain(&content)?;
                arms.push(Arm { variant, chain });
                if !content.is_empty() {
                    content.parse::<Token![,]>()?;
                }
            }
            Some(arms)
        } else {
            None
        };
        Ok(Self { chain, arms })
    }
}

struct Topology {
    brace: Span,
    stmts: Vec<Stmt>,
}

impl Parse for Topology {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let content;
        let brace = braced!(content in input);
        let stmts: Punctuated<Stmt, Token![,]> = Punctuated::parse_terminated(&content)?;
        Ok(Self {
            brace: brace.span.join(),
            stmts: stmts.into_iter().collect(),
        })
    }
}

struct GraphArgs {
    name: Option<LitStr>,
    trigger: Option<LitStr>,
    topology: Topology,
}

impl Parse for GraphArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut name = None;
        let mut trigger = None;
        let mut topology = None;
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            match key.to_string().as_str() {
                "name" => {
                    if name.is_some() {
                        return Err(syn::Error::new(key.span(), "duplicate `name` attribute"));
                    }
                    name = Some(input.parse()?);
                }
                "trigger" => {
                    if trigger.is_some() {
                        return Err(syn::Error::new(key.span(), "duplicate `trigger` attribute"));
                    }
                    let kind: Ident = input.parse()?;
                    if kind != "reactor" {
                        return Err(syn::Error::new(
                            kind.span(),
                            "expected `trigger = reactor(\"name\")`",
                        ));
                    }
                    let content;
                    parenthesized!(content in input);
                    trigger = Some(content.parse()?);
                }
                "graph" => {
                    if topology.is_some() {
                        return Err(syn::Error::new(key.span(), "duplicate `graph` attribute"));
                    }
                    topology = Some(input.parse()?);
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown #[computation_graph] key `{other}`: expected `graph`, `trigger` or `name`"),
                    ))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        let topology =
            topology.ok_or_else(|| input.error("#[computation_graph] needs `graph = { .. }`"))?;
        Ok(Self {
            name,
            trigger,
            topology,
        })
    }
}

/// One node as the topology declares it.
struct NodeSpec {
    name: Ident,
    sources: Option<Vec<Ident>>,
    /// Upstream node names, in order of first appearance of the edge.
    upstreams: Vec<Ident>,
    /// Where each upstream edge is declared (the target's name in that edge).
    upstream_spans: Vec<Span>,
    /// Routes out of this node: (variant, target).
    routes: Option<Vec<(Ident, Ident)>>,
    /// Has plain `->` out-edges.
    chained_out: bool,
}

/// A node's function as the module declares it.
struct FnSpec<'a> {
    item: &'a ItemFn,
    is_async: bool,
    blocking: bool,
    params: Vec<(&'a syn::Pat, &'a Type)>,
    output: Type,
}

fn fn_spec(item: &ItemFn, blocking: bool) -> syn::Result<FnSpec<'_>> {
    let mut params = Vec::new();
    for arg in &item.sig.inputs {
        match arg {
            FnArg::Typed(p) => params.push((&*p.pat, &*p.ty)),
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "graph nodes are free functions (no `self`)",
                ))
            }
        }
    }
    let output = match &item.sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    Ok(FnSpec {
        item,
        is_async: item.sig.asyncness.is_some(),
        blocking,
        params,
        output,
    })
}

/// `Option<&T>` -> `T`.
fn optional_ref(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(Type::Reference(r)) if r.mutability.is_none() => Some(&r.elem),
        _ => None,
    }
}

/// `&T` -> `T`.
fn plain_ref(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Reference(r) if r.mutability.is_none() => Some(&r.elem),
        _ => None,
    }
}

fn collect_nodes(topology: &Topology) -> syn::Result<(Vec<NodeSpec>, HashMap<String, usize>)> {
    let mut nodes: Vec<NodeSpec> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut edges: HashSet<(String, String)> = HashSet::new();

    fn touch(
        nodes: &mut Vec<NodeSpec>,
        index: &mut HashMap<String, usize>,
        r: &NodeRef,
    ) -> syn::Result<usize> {
        let key = r.name.to_string();
        let i = match index.get(&key) {
            Some(&i) => i,
            None => {
                nodes.push(NodeSpec {
                    name: r.name.clone(),
                    sources: None,
                    upstreams: Vec::new(),
                    upstream_spans: Vec::new(),
                    routes: None,
                    chained_out: false,
                });
                index.insert(key, nodes.len() - 1);
                nodes.len() - 1
            }
        };
        if let Some(sources) = &r.sources {
            match &nodes[i].sources {
                Some(existing) => {
                    let a: Vec<String> = existing.iter().map(|s| s.to_string()).collect();
                    let b: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
                    if a != b {
                        return Err(syn::Error::new(
                            r.name.span(),
                            format!(
                                "node `{}` is given cache inputs twice, differently: ({}) and ({})",
                                r.name,
                                a.join(", "),
                                b.join(", ")
                            ),
                        ));
                    }
                }
                None => nodes[i].sources = Some(sources.clone()),
            }
        }
        Ok(i)
    }

    fn edge(
        nodes: &mut [NodeSpec],
        edges: &mut HashSet<(String, String)>,
        from: usize,
        to: usize,
        at: &Ident,
    ) -> syn::Result<()> {
        let key = (nodes[from].name.to_string(), nodes[to].name.to_string());
        if !edges.insert(key.clone()) {
            return Err(syn::Error::new(
                at.span(),
                format!("edge `{} -> {}` is declared twice", key.0, key.1),
            ));
        }
        let from_name = nodes[from].name.clone();
        nodes[to].upstreams.push(from_name);
        nodes[to].upstream_spans.push(at.span());
        Ok(())
    }

    for stmt in &topology.stmts {
        let mut prev = touch(&mut nodes, &mut index, &stmt.chain[0])?;
        for next in &stmt.chain[1..] {
            let i = touch(&mut nodes, &mut index, next)?;
            nodes[prev].chained_out = true;
            edge(&mut nodes, &mut edges, prev, i, &next.name)?;
            prev = i;
        }
        if let Some(arms) = &stmt.arms {
            let router = prev;
            if nodes[router].routes.is_some() {
                return Err(syn::Error::new(
                    nodes[router].name.span(),
                    format!(
                        "routing node `{}` has its routes declared twice",
                        nodes[router].name
                    ),
                ));
            }
            if arms.is_empty() {
                return Err(syn::Error::new(
                    nodes[router].name.span(),
                    format!("routing node `{}` has no routes", nodes[router].name),
                ));
            }
            let mut routes = Vec::new();
            let mut variants = HashSet::new();
            for arm in arms {
                if !variants.insert(arm.variant.to_string()) {
                    return Err(syn::Error::new(
                        arm.variant.span(),
                        format!("variant `{}` is routed twice", arm.variant),
                    ));
                }
                let first = touch(&mut nodes, &mut index, &arm.chain[0])?;
                edge(&mut nodes, &mut edges, router, first, &arm.chain[0].name)?;
                routes.push((arm.variant.clone(), arm.chain[0].name.clone()));
                let mut p = first;
                for next in &arm.chain[1..] {
                    let i = touch(&mut nodes, &mut index, next)?;
                    nodes[p].chained_out = true;
                    edge(&mut nodes, &mut edges, p, i, &next.name)?;
                    p = i;
                }
            }
            nodes[router].routes = Some(routes);
        }
    }
    for n in &nodes {
        if n.routes.is_some() && n.chained_out {
            return Err(syn::Error::new(
                n.name.span(),
                format!("routing node `{}` also has plain `->` edges; its outputs go through its variants", n.name),
            ));
        }
    }
    Ok((nodes, index))
}

/// Finds a cycle; returns it as a closed path of node indices.
fn find_cycle(nodes: &[NodeSpec], index: &HashMap<String, usize>) -> Option<Vec<usize>> {
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (to, n) in nodes.iter().enumerate() {
        for up in &n.upstreams {
            if let Some(&from) = index.get(&up.to_string()) {
                succ[from].push(to);
            }
        }
    }
    // 0 = unvisited, 1 = on stack, 2 = done.
    let mut state = vec![0u8; nodes.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn dfs(
        v: usize,
        succ: &[Vec<usize>],
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        state[v] = 1;
        stack.push(v);
        for &w in &succ[v] {
            if state[w] == 1 {
                let start = stack.iter().position(|&x| x == w).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(w);
                return Some(cycle);
            }
            if state[w] == 0 {
                if let Some(c) = dfs(w, succ, state, stack) {
                    return Some(c);
                }
            }
        }
        stack.pop();
        state[v] = 2;
        None
    }
    for v in 0..nodes.len() {
        if state[v] == 0 {
            if let Some(c) = dfs(v, &succ, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// Declares a computation graph over the functions of an inline module. See the crate docs.
#[proc_macro_attribute]
pub fn computation_graph(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(attr as GraphArgs);
    let module = syn::parse_macro_input!(item as ItemMod);
    match expand_graph(args, module) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// Removes `#[node(..)]` options from the module's functions (they are not real
/// attributes) and returns the names of the functions marked `blocking`.
fn take_node_options(module: &mut ItemMod) -> syn::Result<HashSet<String>> {
    let mut blocking = HashSet::new();
    let Some((_, items)) = &mut module.content else {
        return Ok(blocking);
    };
    for item in items.iter_mut() {
        let ident = match &*item {
            Item::Fn(f) => Some(&f.sig.ident),
            Item::Const(c) => Some(&c.ident),
            Item::Static(c) => Some(&c.ident),
            Item::Struct(c) => Some(&c.ident),
            Item::Enum(c) => Some(&c.ident),
            Item::Type(c) => Some(&c.ident),
            Item::Mod(c) => Some(&c.ident),
            _ => None,
        };
        if let Some(ident) = ident {
            let name = name_of(ident);
            if RESERVED.contains(&name.as_str()) || name.starts_with("__cloacina") {
                return Err(syn::Error::new(
                    ident.span(),
                    format!(
                        "`{name}` is generated by #[computation_graph] (reserved: {}, and names starting with `__cloacina`); rename this item",
                        RESERVED.join(", ")
                    ),
                ));
            }
        }
        let Item::Fn(f) = item else { continue };
        // The macro makes upstream parameters `&Output` (e.g. `&String`): allow what clippy
        // would say about that shape.
        f.attrs
            .push(syn::parse_quote!(#[allow(clippy::ptr_arg, clippy::trivially_copy_pass_by_ref)]));
        let mut kept = Vec::with_capacity(f.attrs.len());
        for attr in f.attrs.drain(..) {
            if !attr.path().is_ident("node") {
                kept.push(attr);
                continue;
            }
            let option: Ident = attr.parse_args()?;
            if option != "blocking" {
                return Err(syn::Error::new(
                    option.span(),
                    format!("unknown node option `{option}`: expected `#[node(blocking)]`"),
                ));
            }
            if let Some(asyncness) = &f.sig.asyncness {
                return Err(syn::Error::new(
                    asyncness.span(),
                    "`#[node(blocking)]` is for plain CPU-heavy functions, not async ones",
                ));
            }
            blocking.insert(f.sig.ident.to_string());
        }
        f.attrs = kept;
    }
    Ok(blocking)
}

fn expand_graph(args: GraphArgs, mut module: ItemMod) -> syn::Result<TokenStream2> {
    let blocking = take_node_options(&mut module)?;
    let Some((_, items)) = &module.content else {
        return Err(syn::Error::new(
            module.ident.span(),
            "#[computation_graph] needs an inline module: `mod name { .. }`",
        ));
    };
    let (nodes, index) = collect_nodes(&args.topology)?;
    if nodes.is_empty() {
        return Err(syn::Error::new(
            args.topology.brace,
            "the graph declares no nodes",
        ));
    }

    // Functions <-> topology nodes.
    let mut fns: BTreeMap<String, FnSpec<'_>> = BTreeMap::new();
    for item in items {
        if let Item::Fn(f) = item {
            let name = f.sig.ident.to_string();
            if !index.contains_key(&name) {
                return Err(syn::Error::new(
                    f.sig.ident.span(),
                    format!(
                        "function `{name}` is not in the graph topology (move helpers out of the module, or add `{name}` to `graph = {{ .. }}`)"
                    ),
                ));
            }
            let is_blocking = blocking.contains(&name);
            fns.insert(name, fn_spec(f, is_blocking)?);
        }
    }
    for n in &nodes {
        if !fns.contains_key(&n.name.to_string()) {
            return Err(syn::Error::new(
                n.name.span(),
                format!(
                    "node `{}` has no function `{}` in module `{}`",
                    n.name, n.name, module.ident
                ),
            ));
        }
    }
    if !nodes.iter().any(|n| n.upstreams.is_empty()) {
        return Err(syn::Error::new(
            args.topology.brace,
            "the graph has no entry node (a node that reads only cache sources)",
        ));
    }
    if let Some(cycle) = find_cycle(&nodes, &index) {
        let path: Vec<String> = cycle.iter().map(|&i| nodes[i].name.to_string()).collect();
        // Point at the edge that closes the cycle (`c -> b` in `b -> c -> b`).
        let (from, to) = (
            &nodes[cycle[cycle.len() - 2]],
            &nodes[cycle[cycle.len() - 1]],
        );
        let span = to
            .upstreams
            .iter()
            .position(|u| *u == from.name)
            .map_or(to.name.span(), |k| to.upstream_spans[k]);
        return Err(syn::Error::new(
            span,
            format!("cycle in graph: {}", path.join(" -> ")),
        ));
    }

    // Signatures: cache inputs first (Option<&T>), then one &T per upstream.
    let mut checks = Vec::new();
    let mut calls = Vec::new();
    let mut source_types: HashMap<String, &Type> = HashMap::new();
    for n in &nodes {
        let f = &fns[&n.name.to_string()];
        let sources = n.sources.clone().unwrap_or_default();
        if sources.is_empty() && n.upstreams.is_empty() {
            return Err(syn::Error::new(
                n.name.span(),
                format!(
                    "entry node `{}` reads no source: declare its cache inputs as `{}(source, ..)`",
                    n.name, n.name
                ),
            ));
        }
        let expected = sources.len() + n.upstreams.len();
        if expected > MAX_INPUTS {
            return Err(syn::Error::new(
                n.name.span(),
                format!(
                    "node `{}` has {expected} inputs; a node takes at most {MAX_INPUTS} (group some upstream values into one struct)",
                    n.name
                ),
            ));
        }
        if f.params.len() != expected {
            let mut inputs: Vec<String> = sources
                .iter()
                .map(|s| format!("{s} (cache, Option<&T>)"))
                .collect();
            inputs.extend(n.upstreams.iter().map(|u| format!("{u} (upstream, &T)")));
            return Err(syn::Error::new(
                f.item.sig.ident.span(),
                format!(
                    "`{}` takes {} parameter(s), but the topology gives it {}: {}",
                    n.name,
                    f.params.len(),
                    expected,
                    inputs.join(", ")
                ),
            ));
        }
        let mut specs = Vec::new();
        for (k, src) in sources.iter().enumerate() {
            let (_, ty) = f.params[k];
            let Some(inner) = optional_ref(ty) else {
                return Err(syn::Error::new_spanned(
                    ty,
                    format!(
                        "cache input `{src}` of `{}` must be declared as `Option<&T>`",
                        n.name
                    ),
                ));
            };
            if index.contains_key(&src.to_string()) {
                return Err(syn::Error::new(
                    src.span(),
                    format!("`{src}` is both a node and a cache source"),
                ));
            }
            let lit = name_of(src);
            specs.push(quote_spanned!(ty.span()=> ::cloacina::graph::source::<#inner>(#lit)));
            match source_types.get(&lit) {
                Some(first) => checks.push(same_type(checks.len(), first, inner)),
                None => {
                    // A cache source must be serializable (CG-D-12): say so on its type.
                    let (start, end) = span_range(inner);
                    let check = quote_spanned!(start=> __cloacina_cache_source::<#inner);
                    checks.push(quote_spanned!(end=> #check>();));
                    source_types.insert(lit, inner);
                }
            }
        }
        for (k, up) in n.upstreams.iter().enumerate() {
            let (_, ty) = f.params[sources.len() + k];
            let Some(inner) = plain_ref(ty) else {
                return Err(syn::Error::new_spanned(
                    ty,
                    format!(
                        "upstream input `{up}` of `{}` must be declared as `&T`",
                        n.name
                    ),
                ));
            };
            let key = up.to_string();
            let lit = name_of(up);
            specs.push(quote_spanned!(ty.span()=> ::cloacina::graph::upstream::<#inner>(__cloacina_n(#lit))));
            let upstream = &nodes[index[&key]];
            if upstream.routes.is_none() {
                checks.push(same_type(checks.len(), &fns[&key].output, inner));
            }
        }
        let fn_ident = &f.item.sig.ident;
        // `self::` so that no local of the generated code can stand in for the function.
        let fn_ident = quote!(self::#fn_ident);
        let name = name_of(&n.name);
        if n.routes.is_some() && f.blocking {
            return Err(syn::Error::new(
                f.item.sig.ident.span(),
                format!(
                    "`#[node(blocking)]` is for plain nodes; routing node `{}` cannot be blocking",
                    n.name
                ),
            ));
        }
        let call = match (&n.routes, f.is_async) {
            (None, false) if f.blocking => {
                quote!(.blocking_node(__cloacina_n(#name), (#(#specs,)*), #fn_ident))
            }
            (None, false) => quote!(.node(__cloacina_n(#name), (#(#specs,)*), #fn_ident)),
            (None, true) => quote!(.async_node(__cloacina_n(#name), (#(#specs,)*), #fn_ident)),
            (Some(routes), is_async) => {
                let enum_ty = &f.output;
                let mut route_tokens = Vec::new();
                for (variant, target) in routes {
                    let target_fn = &fns[&target.to_string()];
                    let target_node = &nodes[index[&target.to_string()]];
                    let pos = target_node.sources.as_ref().map_or(0, Vec::len)
                        + target_node
                            .upstreams
                            .iter()
                            .position(|u| *u == n.name)
                            .unwrap_or(0);
                    let Some(payload) = target_fn.params.get(pos).and_then(|(_, t)| plain_ref(t))
                    else {
                        return Err(syn::Error::new(
                            target.span(),
                            format!("`{target}` must take the `{variant}` payload as `&T`"),
                        ));
                    };
                    let variant_lit = name_of(variant);
                    let target_lit = name_of(target);
                    let extract = format_ident!("__cloacina_route_{}_{}", n.name, variant);
                    route_tokens.push(quote_spanned! {variant.span()=>
                        ::cloacina::graph::Route::new(#variant_lit, __cloacina_n(#target_lit), {
                            #[allow(non_snake_case, unreachable_patterns)]
                            fn #extract<'v>(e: &'v #enum_ty) -> ::core::option::Option<&'v #payload> {
                                type __CloacinaRouted = #enum_ty;
                                match e {
                                    __CloacinaRouted::#variant(v) => ::core::option::Option::Some(v),
                                    _ => ::core::option::Option::None,
                                }
                            }
                            #extract
                        })
                    });
                }
                if is_async {
                    quote!(.async_router(__cloacina_n(#name), (#(#specs,)*), #fn_ident, [#(#route_tokens),*]))
                } else {
                    quote!(.router(__cloacina_n(#name), (#(#specs,)*), #fn_ident, [#(#route_tokens),*]))
                }
            }
        };
        calls.push(call);
    }

    let graph_name = args
        .name
        .map(|n| n.value())
        .unwrap_or_else(|| name_of(&module.ident));
    let trigger = match &args.trigger {
        Some(t) => quote!(::core::option::Option::Some(#t)),
        None => quote!(::core::option::Option::None),
    };
    let generated: TokenStream2 = quote! {
        /// Name of this graph.
        pub const NAME: &str = #graph_name;
        /// The reactor this graph is bound to (`None`: trigger-less, invoked directly).
        pub const TRIGGER: ::core::option::Option<&str> = #trigger;

        // Ahead of `build()`, so that its errors, on the user's types, are reported first.
        #[doc(hidden)]
        #[allow(dead_code, clippy::all)]
        fn __cloacina_type_checks() {
            fn __cloacina_cache_source<T>()
            where
                ::cloacina::graph::Source<T>: ::cloacina::graph::node::Input,
            {
            }
            fn __cloacina_value<'a, T: ?::core::marker::Sized>() -> &'a T {
                ::core::unreachable!()
            }
            #(#checks)*
        }

        /// Adds this graph's nodes to `builder`, each named `prefix` + its name (cache source
        /// names are not prefixed: graphs combined on one reactor share its cache).
        pub fn add_to(
            __cloacina_builder: ::cloacina::graph::GraphBuilder,
            __cloacina_prefix: &str,
        ) -> ::cloacina::graph::GraphBuilder {
            let __cloacina_n = |name: &str| -> ::std::string::String {
                ::std::format!("{}{}", __cloacina_prefix, name)
            };
            __cloacina_builder
                #(#calls)*
        }

        /// Builds a fresh copy of the declared graph.
        pub fn build() -> ::core::result::Result<::cloacina::graph::CompiledGraph, ::cloacina::graph::BuildError> {
            add_to(::cloacina::graph::GraphBuilder::new(NAME), "").build()
        }

        /// The declared graph, built once and shared.
        pub fn graph() -> ::core::result::Result<::std::sync::Arc<::cloacina::graph::CompiledGraph>, ::cloacina::graph::BuildError> {
            static GRAPH: ::std::sync::OnceLock<::std::sync::Arc<::cloacina::graph::CompiledGraph>> =
                ::std::sync::OnceLock::new();
            if let ::core::option::Option::Some(g) = GRAPH.get() {
                return ::core::result::Result::Ok(::std::sync::Arc::clone(g));
            }
            let built = ::std::sync::Arc::new(build()?);
            ::core::result::Result::Ok(::std::sync::Arc::clone(GRAPH.get_or_init(|| built)))
        }

        /// Its declaration, for a [`cloacina::registry::Registry`].
        pub fn declaration() -> ::cloacina::registry::GraphDecl {
            ::cloacina::registry::GraphDecl::new(NAME, TRIGGER, build).combinable(add_to)
        }

        ::cloacina::inventory::submit! {
            ::cloacina::registry::GraphEntry {
                name: NAME,
                trigger: TRIGGER,
                build,
                add_to,
                site: (::core::file!(), ::core::line!(), ::core::column!()),
            }
        }
    };
    if let Some((_, items)) = &mut module.content {
        let file: syn::File = syn::parse2(generated)?;
        items.extend(file.items);
    }
    Ok(module.into_token_stream())
}

/// Checks that `b` (a node's parameter type) is `a` (what feeds it). On a mismatch rustc says
/// "expected `&A`, found `&B`" on `b`, and "expected due to this" on `a`.
fn same_type(k: usize, a: &Type, b: &Type) -> TokenStream2 {
    let check = format_ident!("__cloacina_same_{}", k);
    let expected = quote_spanned!(a.span()=> &#a);
    let (start, end) = span_range(b);
    let value = quote_spanned!(start=> __cloacina_value::<#b>);
    let call = quote_spanned!(end=> ());
    quote! {
        fn #check() {
            let _: #expected = #value #call;
        }
    }
}

/// The spans of the first and last tokens of `tokens`: code spanned from one to the other
/// points at all of it (a lone `Span` only covers the first token on stable).
fn span_range(tokens: &impl ToTokens) -> (Span, Span) {
    let mut iter = tokens.to_token_stream().into_iter();
    let start = iter.next().map_or_else(Span::call_site, |t| t.span());
    let end = iter.last().map_or(start, |t| t.span());
    (start, end)
}
