//! Parsing: the `#[reactor]` and `#[computation_graph]` attributes, and the topology turned
//! into one [`NodeSpec`] per node (with the checks only the syntax can make: an edge or a
//! routing block declared twice, cache inputs given twice differently, a router with plain
//! edges).

use std::collections::{HashMap, HashSet};

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{braced, bracketed, parenthesized, Ident, LitStr, Token};

pub(crate) enum CriteriaKind {
    Any,
    All,
}

pub(crate) struct CriteriaArg {
    pub(crate) kind: CriteriaKind,
    pub(crate) sources: Option<Vec<Ident>>,
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

pub(crate) struct ReactorArgs {
    pub(crate) name: LitStr,
    pub(crate) accumulators: Vec<Ident>,
    pub(crate) criteria: Option<CriteriaArg>,
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

pub(crate) struct NodeRef {
    pub(crate) name: Ident,
    pub(crate) sources: Option<Vec<Ident>>,
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

pub(crate) struct Arm {
    pub(crate) variant: Ident,
    pub(crate) chain: Vec<NodeRef>,
}

pub(crate) struct Stmt {
    pub(crate) chain: Vec<NodeRef>,
    pub(crate) arms: Option<Vec<Arm>>,
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

pub(crate) struct Topology {
    pub(crate) brace: Span,
    pub(crate) stmts: Vec<Stmt>,
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

pub(crate) struct GraphArgs {
    pub(crate) name: Option<LitStr>,
    pub(crate) trigger: Option<LitStr>,
    pub(crate) topology: Topology,
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
pub(crate) struct NodeSpec {
    pub(crate) name: Ident,
    pub(crate) sources: Option<Vec<Ident>>,
    /// Upstream node names, in order of first appearance of the edge.
    pub(crate) upstreams: Vec<Ident>,
    /// Where each upstream edge is declared (the target's name in that edge).
    pub(crate) upstream_spans: Vec<Span>,
    /// Routes out of this node: (variant, target).
    pub(crate) routes: Option<Vec<(Ident, Ident)>>,
    /// Has plain `->` out-edges.
    pub(crate) chained_out: bool,
}

pub(crate) fn collect_nodes(
    topology: &Topology,
) -> syn::Result<(Vec<NodeSpec>, HashMap<String, usize>)> {
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
            // No routes, or a variant routed twice: topology rules, checked in `validate`.
            let mut routes = Vec::new();
            for arm in arms {
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
