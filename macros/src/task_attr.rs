//! `#[task(...)]`: parsing its arguments (shared with `#[workflow]`, which reads the task
//! attributes of its module before they expand) and generating the task type.

use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{bracketed, parenthesized, Expr, Ident, LitStr, Token};

use crate::name_of;

/// The keys `#[task]` accepts.
const KEYS: &str = "id, dependencies, retry_policy, retry_attempts, retry_backoff, retry_delay_ms, trigger_rules, timeout, invokes";

/// A parsed trigger rule (ids keep their spans for errors).
pub(crate) enum Rule {
    Always,
    Combine(&'static str, Vec<Rule>),
    TaskState(&'static str, LitStr),
    ContextValue(LitStr, Ident, Option<Expr>),
}

impl Parse for Rule {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let head: Ident = input.parse()?;
        let content;
        parenthesized!(content in input);
        let name = head.to_string();
        match name.as_str() {
            "always" => Ok(Rule::Always),
            "all" | "any" | "none" => {
                let kind = match name.as_str() {
                    "all" => "all",
                    "any" => "any",
                    _ => "none",
                };
                let rules: Punctuated<Rule, Token![,]> = Punctuated::parse_terminated(&content)?;
                Ok(Rule::Combine(kind, rules.into_iter().collect()))
            }
            "task_success" | "task_failed" | "task_skipped" => {
                let kind = match name.as_str() {
                    "task_success" => "task_success",
                    "task_failed" => "task_failed",
                    _ => "task_skipped",
                };
                Ok(Rule::TaskState(kind, content.parse()?))
            }
            "context_value" => {
                let key: LitStr = content.parse()?;
                content.parse::<Token![,]>()?;
                let op: Ident = content.parse()?;
                let value = if content.parse::<Option<Token![,]>>()?.is_some() && !content.is_empty() {
                    Some(content.parse::<Expr>()?)
                } else {
                    None
                };
                Ok(Rule::ContextValue(key, op, value))
            }
            other => Err(syn::Error::new(
                head.span(),
                format!("unknown trigger rule `{other}`: expected all, any, none, always, task_success, task_failed, task_skipped or context_value"),
            )),
        }
    }
}

impl Rule {
    /// The task ids the rule names.
    pub(crate) fn tasks<'a>(&'a self, out: &mut Vec<&'a LitStr>) {
        match self {
            Rule::Combine(_, rules) => rules.iter().for_each(|r| r.tasks(out)),
            Rule::TaskState(_, id) => out.push(id),
            Rule::Always | Rule::ContextValue(..) => {}
        }
    }

    fn expand(&self) -> syn::Result<TokenStream2> {
        let wf = quote!(::cloacina::workflow);
        Ok(match self {
            Rule::Always => quote!(#wf::always()),
            Rule::Combine(kind, rules) => {
                let f = format_ident!("{}", kind);
                let rules = rules
                    .iter()
                    .map(Rule::expand)
                    .collect::<syn::Result<Vec<_>>>()?;
                quote!(#wf::#f([#(#rules),*]))
            }
            Rule::TaskState(kind, id) => {
                let f = format_ident!("{}", kind);
                quote!(#wf::#f(#id))
            }
            Rule::ContextValue(key, op, value) => {
                let variant = match op.to_string().as_str() {
                    "equals" => "Equals",
                    "not_equals" => "NotEquals",
                    "greater_than" => "GreaterThan",
                    "less_than" => "LessThan",
                    "contains" => "Contains",
                    "not_contains" => "NotContains",
                    "exists" => "Exists",
                    "not_exists" => "NotExists",
                    other => {
                        return Err(syn::Error::new(
                            op.span(),
                            format!("unknown operator `{other}`: expected equals, not_equals, greater_than, less_than, contains, not_contains, exists or not_exists"),
                        ))
                    }
                };
                let needs_value = !matches!(variant, "Exists" | "NotExists");
                let value = match (value, needs_value) {
                    (Some(v), true) => quote!(#wf::serde_json::json!(#v)),
                    (None, false) => quote!(#wf::serde_json::Value::Null),
                    (None, true) => {
                        return Err(syn::Error::new(
                            op.span(),
                            format!("`{op}` needs a value: context_value(\"key\", {op}, value)"),
                        ))
                    }
                    (Some(v), false) => {
                        return Err(syn::Error::new_spanned(v, format!("`{op}` takes no value")))
                    }
                };
                let variant = Ident::new(variant, op.span());
                quote!(#wf::context_value(#key, #wf::ValueOperator::#variant, #value))
            }
        })
    }
}

/// The arguments of `#[task(...)]`.
pub(crate) struct TaskArgs {
    pub(crate) id: Option<LitStr>,
    pub(crate) dependencies: Vec<LitStr>,
    retry_policy: Option<Expr>,
    retry_attempts: Option<Expr>,
    retry_backoff: Option<LitStr>,
    retry_delay_ms: Option<Expr>,
    pub(crate) rule: Option<Rule>,
    timeout: Option<Expr>,
    invokes: Option<LitStr>,
}

impl Parse for TaskArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = TaskArgs {
            id: None,
            dependencies: Vec::new(),
            retry_policy: None,
            retry_attempts: None,
            retry_backoff: None,
            retry_delay_ms: None,
            rule: None,
            timeout: None,
            invokes: None,
        };
        let mut seen: Vec<String> = Vec::new();
        while !input.is_empty() {
            let key: Ident = input.parse()?;
            let name = key.to_string();
            if seen.contains(&name) {
                return Err(syn::Error::new(
                    key.span(),
                    format!("`{name}` is given twice"),
                ));
            }
            seen.push(name.clone());
            input.parse::<Token![=]>()?;
            match name.as_str() {
                "id" => args.id = Some(input.parse()?),
                "dependencies" => {
                    let content;
                    bracketed!(content in input);
                    let deps: Punctuated<LitStr, Token![,]> =
                        Punctuated::parse_terminated(&content)?;
                    args.dependencies = deps.into_iter().collect();
                }
                "retry_policy" => args.retry_policy = Some(input.parse()?),
                "retry_attempts" => args.retry_attempts = Some(input.parse()?),
                "retry_backoff" => args.retry_backoff = Some(input.parse()?),
                "retry_delay_ms" => args.retry_delay_ms = Some(input.parse()?),
                "trigger_rules" => args.rule = Some(input.parse()?),
                "timeout" => args.timeout = Some(input.parse()?),
                "invokes" => {
                    // `invokes = "name"` or `invokes = computation_graph("name")`.
                    if input.peek(LitStr) {
                        args.invokes = Some(input.parse()?);
                    } else {
                        let head: Ident = input.parse()?;
                        if head != "computation_graph" {
                            return Err(syn::Error::new(
                                head.span(),
                                "expected `invokes = \"graph\"` or `invokes = computation_graph(\"graph\")`",
                            ));
                        }
                        let content;
                        parenthesized!(content in input);
                        args.invokes = Some(content.parse()?);
                    }
                }
                other => {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown #[task] key `{other}`: expected one of {KEYS}"),
                    ))
                }
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        if let Some(policy) = &args.retry_policy {
            if args.retry_attempts.is_some()
                || args.retry_backoff.is_some()
                || args.retry_delay_ms.is_some()
            {
                return Err(syn::Error::new_spanned(
                    policy,
                    "give either `retry_policy` or the shorthand `retry_attempts` / `retry_backoff` / `retry_delay_ms`, not both",
                ));
            }
        }
        Ok(args)
    }
}

impl TaskArgs {
    /// The task id: `id`, or the function's name.
    pub(crate) fn id_of(&self, function: &Ident) -> String {
        self.id
            .as_ref()
            .map_or_else(|| name_of(function), LitStr::value)
    }

    fn retry(&self) -> syn::Result<Option<TokenStream2>> {
        let wf = quote!(::cloacina::workflow);
        if let Some(policy) = &self.retry_policy {
            return Ok(Some(quote!(#policy)));
        }
        if self.retry_attempts.is_none()
            && self.retry_backoff.is_none()
            && self.retry_delay_ms.is_none()
        {
            return Ok(None);
        }
        let mut policy = quote!(#wf::RetryPolicy::builder());
        if let Some(n) = &self.retry_attempts {
            policy = quote!(#policy.max_attempts(#n));
        }
        if let Some(ms) = &self.retry_delay_ms {
            policy = quote!(#policy.initial_delay(::core::time::Duration::from_millis(#ms)));
        }
        if let Some(backoff) = &self.retry_backoff {
            // Linear adds the initial delay once per retry.
            let step = self
                .retry_delay_ms
                .as_ref()
                .map_or_else(|| quote!(1000u64), |ms| quote!(#ms));
            let strategy = match backoff.value().as_str() {
                "fixed" => quote!(#wf::BackoffStrategy::Fixed),
                "linear" => quote!(#wf::BackoffStrategy::Linear {
                    increment: ::core::time::Duration::from_millis(#step)
                }),
                "exponential" => {
                    quote!(#wf::BackoffStrategy::Exponential { base: 2.0, multiplier: 1.0 })
                }
                other => {
                    return Err(syn::Error::new(
                        backoff.span(),
                        format!("unknown retry_backoff `{other}`: expected \"fixed\", \"linear\" or \"exponential\""),
                    ))
                }
            };
            policy = quote!(#policy.backoff_strategy(#strategy));
        }
        Ok(Some(quote!(#policy.build())))
    }
}

/// FNV-1a over the attribute's and the function's tokens: the task's code fingerprint
/// (stable across builds; any change to the declaration changes it).
fn fingerprint(attr: &TokenStream2, function: &syn::ItemFn) -> String {
    let text = format!("{attr}\n{}", quote!(#function));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Expands `#[task]` on `function`: the function stays, and a unit struct named
/// `<function>_task` implements `Task` by calling it.
pub(crate) fn expand_task(
    attr: &TokenStream2,
    args: TaskArgs,
    function: syn::ItemFn,
) -> syn::Result<TokenStream2> {
    if function.sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            function.sig.fn_token,
            "#[task] goes on an `async fn name(ctx: &mut Context<Value>) -> Result<(), TaskError>`",
        ));
    }
    if !(1..=2).contains(&function.sig.inputs.len()) {
        return Err(syn::Error::new_spanned(
            &function.sig.inputs,
            "a task takes `ctx: &mut Context<Value>` and, optionally, `handle: &mut TaskHandle`",
        ));
    }
    let name = &function.sig.ident;
    let vis = &function.vis;
    let id = args.id_of(name);
    let deps: Vec<String> = args.dependencies.iter().map(LitStr::value).collect();
    if let Some(rule) = &args.rule {
        let mut named = Vec::new();
        rule.tasks(&mut named);
        if let Some(bad) = named.iter().find(|t| !deps.contains(&t.value())) {
            return Err(syn::Error::new(
                bad.span(),
                format!(
                    "the trigger rule names `{}`, which is not a dependency of `{id}`",
                    bad.value()
                ),
            ));
        }
    }
    let task_type = format_ident!("{}_task", name);
    let wf = quote!(::cloacina::workflow);
    let fp = fingerprint(attr, &function);
    let retry = args.retry()?.map(|policy| {
        quote! {
            fn retry_policy(&self) -> #wf::RetryPolicy { #policy }
        }
    });
    let rule = match &args.rule {
        Some(rule) => {
            let rule = rule.expand()?;
            quote! {
                fn trigger_rule(&self) -> ::core::option::Option<&#wf::TriggerRule> {
                    static RULE: ::std::sync::OnceLock<#wf::TriggerRule> = ::std::sync::OnceLock::new();
                    ::core::option::Option::Some(RULE.get_or_init(|| #rule))
                }
            }
        }
        None => quote!(),
    };
    let timeout = args.timeout.as_ref().map(|t| {
        quote! {
            fn timeout(&self) -> ::core::option::Option<::core::time::Duration> {
                ::core::option::Option::Some(#t)
            }
        }
    });
    // The optional second argument: the attempt's TaskHandle.
    let call = match function.sig.inputs.iter().nth(1) {
        None => quote!(#name(__cloacina_ctx)),
        Some(arg) => {
            let by_mut = matches!(arg, syn::FnArg::Typed(t)
                if matches!(&*t.ty, syn::Type::Reference(r) if r.mutability.is_some()));
            let handle = if by_mut {
                quote!(&mut __cloacina_handle)
            } else {
                quote!(&__cloacina_handle)
            };
            quote!({
                #[allow(unused_mut)]
                let mut __cloacina_handle = #wf::TaskHandle::current();
                #name(__cloacina_ctx, #handle).await
            })
        }
    };
    let call = if function.sig.inputs.len() == 1 {
        quote!(#call.await)
    } else {
        call
    };
    let body = match &args.invokes {
        // The function runs first, then the graph on the same context; its terminal outputs
        // land under their node names.
        // The graph is found first: a wrong name fails before the body's side effects.
        Some(graph) => quote! {
            ::std::boxed::Box::pin(async move {
                let graph = ::cloacina::registry::declared_triggerless_graph(#graph)
                    .map_err(#wf::TaskError::failed)?;
                #call?;
                #wf::invoke_graph(&graph, __cloacina_ctx).await?;
                ::core::result::Result::Ok(())
            })
        },
        None => quote!(::std::boxed::Box::pin(async move { #call })),
    };
    let doc = format!("The task `{id}` (declared by `#[task]` on `{name}`).");
    Ok(quote! {
        #function

        #[doc = #doc]
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, Default)]
        #vis struct #task_type;

        impl #wf::Task for #task_type {
            fn id(&self) -> &str {
                #id
            }

            fn dependencies(&self) -> &[::std::string::String] {
                static DEPS: ::std::sync::OnceLock<::std::vec::Vec<::std::string::String>> =
                    ::std::sync::OnceLock::new();
                DEPS.get_or_init(|| ::std::vec![#(::std::string::String::from(#deps)),*])
            }

            fn execute<'a>(
                &'a self,
                __cloacina_ctx: &'a mut #wf::Context<#wf::serde_json::Value>,
            ) -> #wf::TaskFuture<'a> {
                #body
            }

            fn code_fingerprint(&self) -> ::core::option::Option<&str> {
                ::core::option::Option::Some(#fp)
            }

            #retry
            #rule
            #timeout
        }
    })
}
