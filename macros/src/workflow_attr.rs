//! `#[workflow(name = "...", description = "...")]` on an inline module of `#[task]`
//! functions: checks the task DAG at compile time (with `cloacina-topology`, the rules
//! `Workflow::builder` applies at run time), generates `NAME` and `workflow()`, and
//! registers the workflow at startup.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::{Item, ItemMod, LitStr, Token};

use crate::task_attr::TaskArgs;

/// The arguments of `#[workflow(...)]`.
pub(crate) struct WorkflowArgs {
    name: LitStr,
    description: Option<LitStr>,
}

impl Parse for WorkflowArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut name = None;
        let mut description = None;
        while !input.is_empty() {
            let key: syn::Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            match key.to_string().as_str() {
                "name" => name = Some(input.parse()?),
                "description" => description = Some(input.parse()?),
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown #[workflow] key `{other}`: expected name, description"),
                    ))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        let name = name.ok_or_else(|| {
            syn::Error::new(Span::call_site(), "#[workflow] needs `name = \"...\"`")
        })?;
        Ok(Self { name, description })
    }
}

/// One `#[task]` function of the module.
struct Declared {
    function: syn::Ident,
    id: String,
    args: TaskArgs,
}

pub(crate) fn expand_workflow(
    args: WorkflowArgs,
    mut module: ItemMod,
) -> syn::Result<TokenStream2> {
    let Some((_, items)) = module.content.as_mut() else {
        return Err(syn::Error::new_spanned(
            &module.ident,
            "#[workflow] goes on an inline module: `pub mod name { ... }`",
        ));
    };
    let mut tasks: Vec<Declared> = Vec::new();
    for item in items.iter_mut() {
        let Item::Fn(function) = item else { continue };
        for attr in function.attrs.iter_mut() {
            if attr
                .path()
                .segments
                .last()
                .is_none_or(|s| s.ident != "task")
            {
                continue;
            }
            let task_args: TaskArgs = if matches!(attr.meta, syn::Meta::Path(_)) {
                syn::parse2(TokenStream2::new())?
            } else {
                attr.parse_args()?
            };
            // Expand through the facade whatever the caller imported.
            let tokens = match &attr.meta {
                syn::Meta::List(list) => list.tokens.clone(),
                _ => TokenStream2::new(),
            };
            *attr = syn::parse_quote!(#[::cloacina::task(#tokens)]);
            tasks.push(Declared {
                id: task_args.id_of(&function.sig.ident),
                function: function.sig.ident.clone(),
                args: task_args,
            });
        }
    }
    let name = args.name.value();
    if tasks.is_empty() {
        return Err(syn::Error::new_spanned(
            &module.ident,
            format!("workflow `{name}` has no #[task] functions"),
        ));
    }
    check_dag(&name, &tasks)?;
    let description = args
        .description
        .as_ref()
        .map_or_else(String::new, LitStr::value);
    let task_types: Vec<syn::Ident> = tasks
        .iter()
        .map(|t| format_ident!("{}_task", t.function))
        .collect();
    let wf = quote!(::cloacina::workflow);
    let generated: Vec<Item> = vec![
        syn::parse_quote! {
            /// The workflow's name.
            pub const NAME: &str = #name;
        },
        syn::parse_quote! {
            /// Builds the workflow (its DAG was checked at compile time).
            pub fn workflow() -> ::core::result::Result<#wf::Workflow, #wf::WorkflowError> {
                #wf::Workflow::builder(#name)
                    .description(#description)
                    #(.task(#task_types))*
                    .build()
            }
        },
        syn::parse_quote! {
            ::cloacina::inventory::submit! {
                ::cloacina::registry::WorkflowEntry {
                    name: #name,
                    build: workflow,
                    site: (::core::file!(), ::core::line!(), ::core::column!()),
                }
            }
        },
    ];
    items.extend(generated);
    Ok(quote!(#module))
}

/// Duplicate ids, unknown dependencies and cycles, each an error on the offending name.
fn check_dag(workflow: &str, tasks: &[Declared]) -> syn::Result<()> {
    use cloacina_topology::{Dag, DagError, DagNode};
    let deps: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| t.args.dependencies.iter().map(LitStr::value).collect())
        .collect();
    let nodes: Vec<DagNode<'_>> = tasks
        .iter()
        .zip(&deps)
        .map(|(t, d)| DagNode::new(&t.id, d.iter().map(String::as_str)))
        .collect();
    let at_task = |id: &str| -> Span {
        tasks
            .iter()
            .rev()
            .find(|t| t.id == id)
            .map_or_else(Span::call_site, |t| {
                t.args
                    .id
                    .as_ref()
                    .map_or_else(|| t.function.span(), LitStr::span)
            })
    };
    match Dag::new(&nodes) {
        Ok(_) => Ok(()),
        Err(DagError::DuplicateId { id }) => Err(syn::Error::new(
            at_task(&id),
            format!("workflow `{workflow}`: task `{id}` is declared twice"),
        )),
        Err(DagError::UnknownDependency { id, dependency }) => {
            let span = tasks
                .iter()
                .find(|t| t.id == id)
                .and_then(|t| t.args.dependencies.iter().find(|d| d.value() == dependency))
                .map_or_else(Span::call_site, LitStr::span);
            Err(syn::Error::new(
                span,
                format!(
                    "workflow `{workflow}`: task `{id}` depends on unknown task `{dependency}`"
                ),
            ))
        }
        Err(DagError::Cycle { path }) => {
            let first = path.first().cloned().unwrap_or_default();
            Err(syn::Error::new(
                at_task(&first),
                format!(
                    "workflow `{workflow}`: dependency cycle {}",
                    path.join(" -> ")
                ),
            ))
        }
    }
}
