//! Code generation of `#[reactor]`.

use std::collections::HashSet;

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};

use crate::name_of;
use crate::parse::{CriteriaKind, ReactorArgs};

pub(crate) fn expand_reactor(
    args: ReactorArgs,
    item: syn::ItemStruct,
) -> syn::Result<TokenStream2> {
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
