//! Validation: check the parsed options and fn against what each macro supports, and build
//! the typed model that expansion works from. Every error carries the narrowest span and
//! says what is allowed.

use syn::spanned::Spanned;
use syn::{FnArg, GenericParam, ItemFn, Lit, Pat, PatType, ReturnType, Signature, Type};

use crate::parse::{Opt, combine};

/// The options `#[workflow(..)]` accepts, for error messages.
pub(crate) const WORKFLOW_OPTIONS: &str = "`name = \"..\"`, `queue = \"..\"`, `retries = N`";
/// The options `#[step(..)]` accepts, for error messages.
pub(crate) const STEP_OPTIONS: &str = "`name = \"..\"`, `attempts = N`, `backoff = \"100ms\"`, `max_backoff = \"10s\"`, `timeout = \"30s\"`";

/// A `#[workflow]` fn, checked.
pub(crate) struct Workflow {
    /// The workflow name.
    pub(crate) name: String,
    /// The default queue.
    pub(crate) queue: Option<String>,
    /// The default number of retries.
    pub(crate) retries: u32,
    /// The user's fn, unchanged.
    pub(crate) func: ItemFn,
    /// The input type, if the fn takes an input.
    pub(crate) input: Option<Type>,
    /// The declared return type.
    pub(crate) output: Type,
}

/// A `#[step]` fn, checked.
pub(crate) struct Step {
    /// The step name (its key's prefix).
    pub(crate) name: String,
    /// Attempts in total, if set.
    pub(crate) attempts: Option<u32>,
    /// First retry delay in milliseconds, if set.
    pub(crate) backoff_ms: Option<u64>,
    /// Longest retry delay in milliseconds, if set.
    pub(crate) max_backoff_ms: Option<u64>,
    /// Per-attempt timeout in milliseconds, if set.
    pub(crate) timeout_ms: Option<u64>,
    /// The user's fn, unchanged.
    pub(crate) func: ItemFn,
    /// The parameters, in order.
    pub(crate) params: Vec<PatType>,
    /// The declared return type.
    pub(crate) output: Type,
}

/// Check a `#[workflow]`.
pub(crate) fn workflow(options: Vec<Opt>, func: ItemFn) -> syn::Result<Workflow> {
    let mut errors = None;
    let mut name = None;
    let mut queue = None;
    let mut retries = None;
    let mut seen = Vec::new();
    for opt in options {
        if let Err(e) = once(&mut seen, &opt) {
            combine(&mut errors, e);
            continue;
        }
        let result = match opt.key.to_string().as_str() {
            "name" => identifier(&opt).map(|v| name = Some(v)),
            "queue" => identifier(&opt).map(|v| queue = Some(v)),
            "retries" => int::<u32>(&opt).map(|v| retries = Some(v)),
            _ => Err(unknown(&opt, WORKFLOW_OPTIONS)),
        };
        if let Err(e) = result {
            combine(&mut errors, e);
        }
    }

    let sig = &func.sig;
    signature(sig, "workflow", &mut errors);
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        combine(
            &mut errors,
            syn::Error::new_spanned(
                &sig.generics,
                "generic workflows are not supported: a workflow has one concrete input and output type, because runs are started by name with JSON input",
            ),
        );
    }

    let mut input = None;
    let params: Vec<&FnArg> = sig.inputs.iter().collect();
    match params.first() {
        None => combine(
            &mut errors,
            syn::Error::new(
                sig.paren_token.span.join(),
                "missing the context parameter: a #[workflow] fn takes `(ctx: WorkflowContext, input: Input)` (the input may be left out)",
            ),
        ),
        Some(FnArg::Receiver(receiver)) => combine(&mut errors, no_self(receiver, "workflow")),
        Some(FnArg::Typed(first)) => {
            if !is_context(&first.ty) {
                let misplaced = params.iter().skip(1).find_map(|p| match p {
                    FnArg::Typed(p) if is_context(&p.ty) => Some(p),
                    _ => None,
                });
                let error = match misplaced {
                    Some(ctx) => syn::Error::new_spanned(
                        ctx,
                        "the `WorkflowContext` parameter must come first: `(ctx: WorkflowContext, input: Input)`",
                    ),
                    None if is_context_ref(&first.ty) => syn::Error::new_spanned(
                        &first.ty,
                        "take the context by value: `ctx: WorkflowContext` (it is cheap to clone)",
                    ),
                    None => syn::Error::new_spanned(
                        first,
                        "missing the context parameter: the first parameter of a #[workflow] fn must be `ctx: WorkflowContext`, then the input",
                    ),
                };
                combine(&mut errors, error);
            }
            match params.get(1) {
                Some(FnArg::Typed(second)) if !is_context(&second.ty) => {
                    match owned(
                        &second.ty,
                        "the workflow input is deserialized from JSON and owned by the run: take an owned type (e.g. `String`, not `&str`)",
                    ) {
                        Ok(()) => input = Some((*second.ty).clone()),
                        Err(e) => combine(&mut errors, e),
                    }
                }
                Some(FnArg::Receiver(receiver)) => {
                    combine(&mut errors, no_self(receiver, "workflow"))
                }
                _ => {}
            }
            if let Some(extra) = params.get(2) {
                combine(
                    &mut errors,
                    syn::Error::new_spanned(
                        extra,
                        "too many parameters: a #[workflow] fn takes the context and at most one input; put several values in a struct or a tuple",
                    ),
                );
            }
        }
    }
    let output = returned(
        sig,
        "workflow",
        "a #[workflow] fn must return `Result<Output, Error>`, e.g. `anyhow::Result<Output>`",
        &mut errors,
    );

    match errors {
        Some(errors) => Err(errors),
        None => Ok(Workflow {
            name: name.unwrap_or_else(|| fn_name(sig)),
            queue,
            retries: retries.unwrap_or(0),
            func,
            input,
            output,
        }),
    }
}

/// Check a `#[step]`.
pub(crate) fn step(options: Vec<Opt>, func: ItemFn) -> syn::Result<Step> {
    let mut errors = None;
    let mut name = None;
    let mut attempts = None;
    let mut backoff_ms = None;
    let mut max_backoff_ms = None;
    let mut timeout_ms = None;
    let mut seen = Vec::new();
    for opt in options {
        if let Err(e) = once(&mut seen, &opt) {
            combine(&mut errors, e);
            continue;
        }
        let result = match opt.key.to_string().as_str() {
            "name" => identifier(&opt).map(|v| name = Some(v)),
            "attempts" => int::<u32>(&opt).and_then(|v| {
                if v == 0 {
                    Err(syn::Error::new_spanned(
                        opt.value,
                        "`attempts` counts the first attempt too, so it must be at least 1",
                    ))
                } else {
                    attempts = Some(v);
                    Ok(())
                }
            }),
            "backoff" => duration(&opt).map(|v| backoff_ms = Some(v)),
            "max_backoff" => duration(&opt).map(|v| max_backoff_ms = Some(v)),
            "timeout" => duration(&opt).map(|v| timeout_ms = Some(v)),
            _ => Err(unknown(&opt, STEP_OPTIONS)),
        };
        if let Err(e) = result {
            combine(&mut errors, e);
        }
    }

    let sig = &func.sig;
    signature(sig, "step", &mut errors);
    let generic = sig
        .generics
        .params
        .iter()
        .find(|p| !matches!(p, GenericParam::Lifetime(_)));
    if let Some(generic) = generic {
        combine(
            &mut errors,
            syn::Error::new_spanned(
                generic,
                "generic steps are not supported: a step's value is journaled as JSON, so its types must be concrete; lifetime parameters are allowed",
            ),
        );
    } else if let Some(clause) = &sig.generics.where_clause {
        combine(
            &mut errors,
            syn::Error::new_spanned(
                clause,
                "`where` clauses are not supported on a #[step] fn: its types must be concrete",
            ),
        );
    }
    let mut params = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(receiver) => combine(&mut errors, no_self(receiver, "step")),
            FnArg::Typed(param) if is_context(&param.ty) || is_context_ref(&param.ty) => combine(
                &mut errors,
                syn::Error::new_spanned(
                    param,
                    "a #[step] fn does not take the `WorkflowContext`: it finds the running workflow by itself; remove this parameter",
                ),
            ),
            FnArg::Typed(param) => match impl_trait(&param.ty) {
                Some(span) => combine(
                    &mut errors,
                    syn::Error::new(
                        span,
                        "`impl Trait` parameters are not supported on a #[step] fn: name a concrete type",
                    ),
                ),
                None => params.push(param.clone()),
            },
        }
    }
    let output = returned(
        sig,
        "step",
        "a #[step] fn must return `Result<T, E>` (its value is journaled), e.g. `anyhow::Result<T>`",
        &mut errors,
    );

    match errors {
        Some(errors) => Err(errors),
        None => Ok(Step {
            name: name.unwrap_or_else(|| fn_name(sig)),
            attempts,
            backoff_ms,
            max_backoff_ms,
            timeout_ms,
            func,
            params,
            output,
        }),
    }
}

/// What both macros require of the signature: `async`, not `const`/`unsafe`/`extern`, not
/// variadic.
fn signature(sig: &Signature, attr: &str, errors: &mut Option<syn::Error>) {
    if sig.asyncness.is_none() {
        combine(
            errors,
            syn::Error::new(
                sig.fn_token.span,
                format!(
                    "a #[{attr}] fn must be `async`: write `async fn {}(..)`",
                    sig.ident
                ),
            ),
        );
    }
    if let Some(constness) = &sig.constness {
        combine(
            errors,
            syn::Error::new(constness.span, format!("a #[{attr}] fn cannot be `const`")),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        combine(
            errors,
            syn::Error::new(unsafety.span, format!("a #[{attr}] fn cannot be `unsafe`")),
        );
    }
    if let Some(abi) = &sig.abi {
        combine(
            errors,
            syn::Error::new_spanned(abi, format!("a #[{attr}] fn cannot be `extern`")),
        );
    }
    if let Some(variadic) = &sig.variadic {
        combine(
            errors,
            syn::Error::new_spanned(variadic, format!("a #[{attr}] fn cannot be variadic")),
        );
    }
}

/// The declared return type, which must be written out and not be `impl Trait`.
fn returned(sig: &Signature, attr: &str, message: &str, errors: &mut Option<syn::Error>) -> Type {
    match &sig.output {
        ReturnType::Default => {
            combine(
                errors,
                syn::Error::new(sig.paren_token.span.join(), message),
            );
            Type::Verbatim(proc_macro2::TokenStream::new())
        }
        ReturnType::Type(_, ty) => {
            if let Some(span) = impl_trait(ty) {
                combine(
                    errors,
                    syn::Error::new(
                        span,
                        format!(
                            "a #[{attr}] fn cannot return `impl Trait`: name the `Result` type"
                        ),
                    ),
                );
            }
            (**ty).clone()
        }
    }
}

fn no_self(receiver: &syn::Receiver, attr: &str) -> syn::Error {
    syn::Error::new_spanned(
        receiver,
        format!("a #[{attr}] must be a free fn, not a method: `self` is not allowed"),
    )
}

/// The fn's name as the default workflow or step name (without `r#`).
fn fn_name(sig: &Signature) -> String {
    syn::ext::IdentExt::unraw(&sig.ident).to_string()
}

/// True for a type written `WorkflowContext` or `path::to::WorkflowContext`.
fn is_context(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => path
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "WorkflowContext"),
        Type::Group(group) => is_context(&group.elem),
        Type::Paren(paren) => is_context(&paren.elem),
        _ => false,
    }
}

/// True for `&WorkflowContext` (or `&mut`).
fn is_context_ref(ty: &Type) -> bool {
    matches!(ty, Type::Reference(r) if is_context(&r.elem))
}

/// An error if `ty` borrows (a reference) or is `impl Trait`.
fn owned(ty: &Type, message: &str) -> syn::Result<()> {
    if let Some(span) = impl_trait(ty) {
        return Err(syn::Error::new(
            span,
            "generic workflows are not supported: the input must be one concrete type, not `impl Trait`",
        ));
    }
    match ty {
        Type::Reference(r) => Err(syn::Error::new_spanned(r, message)),
        _ => Ok(()),
    }
}

/// The span of an `impl Trait` anywhere in `ty`.
fn impl_trait(ty: &Type) -> Option<proc_macro2::Span> {
    use syn::visit::Visit;
    struct Finder(Option<proc_macro2::Span>);
    impl<'ast> Visit<'ast> for Finder {
        fn visit_type_impl_trait(&mut self, node: &'ast syn::TypeImplTrait) {
            self.0.get_or_insert(node.span());
        }
    }
    let mut finder = Finder(None);
    finder.visit_type(ty);
    finder.0
}

/// An error if `opt` was given before.
fn once(seen: &mut Vec<String>, opt: &Opt) -> syn::Result<()> {
    let key = opt.key.to_string();
    if seen.contains(&key) {
        return Err(syn::Error::new_spanned(
            &opt.key,
            format!("duplicate option `{key}`"),
        ));
    }
    seen.push(key);
    Ok(())
}

fn unknown(opt: &Opt, valid: &str) -> syn::Error {
    syn::Error::new_spanned(
        &opt.key,
        format!("unknown option `{}`; expected one of: {valid}", opt.key),
    )
}

/// A non-empty string without whitespace (a workflow, queue or step name).
fn identifier(opt: &Opt) -> syn::Result<String> {
    let Lit::Str(lit) = &opt.value else {
        return Err(syn::Error::new_spanned(
            &opt.value,
            format!("`{}` must be a string: `{} = \"...\"`", opt.key, opt.key),
        ));
    };
    let value = lit.value();
    if value.is_empty() || value.chars().any(char::is_whitespace) || value.contains('#') {
        return Err(syn::Error::new_spanned(
            lit,
            format!(
                "`{}` must be non-empty, without whitespace or `#` (step keys use `#` for occurrences)",
                opt.key
            ),
        ));
    }
    Ok(value)
}

/// An integer literal that fits `T`.
fn int<T>(opt: &Opt) -> syn::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match &opt.value {
        Lit::Int(lit) => lit.base10_parse::<T>(),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{}` must be a whole number: `{} = 3`", opt.key, opt.key),
        )),
    }
}

/// A duration string such as `"500ms"`, `"30s"`, `"5m"` or `"1h"`, in milliseconds (> 0).
fn duration(opt: &Opt) -> syn::Result<u64> {
    let error = |span| {
        syn::Error::new(
            span,
            format!(
                "`{}` must be a duration string: a whole number with a unit `ms`, `s`, `m` or `h`, e.g. `{} = \"30s\"`",
                opt.key, opt.key
            ),
        )
    };
    let Lit::Str(lit) = &opt.value else {
        return Err(error(opt.value.span()));
    };
    let text = lit.value();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(error(lit.span())),
    };
    let ms = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| error(lit.span()))?;
    if ms == 0 {
        return Err(syn::Error::new_spanned(
            lit,
            format!("`{}` must be longer than 0", opt.key),
        ));
    }
    Ok(ms)
}

/// Whether a parameter pattern is a plain binding (`name` or `mut name`), and its name.
pub(crate) fn binding(pat: &Pat) -> Option<&syn::Ident> {
    match pat {
        Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Some(&p.ident),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn opt(tokens: proc_macro2::TokenStream) -> Opt {
        let mut options = crate::parse::options(tokens, STEP_OPTIONS).expect("parses");
        options.remove(0)
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(duration(&opt(quote!(timeout = "250ms"))).ok(), Some(250));
        assert_eq!(duration(&opt(quote!(timeout = "30s"))).ok(), Some(30_000));
        assert_eq!(duration(&opt(quote!(timeout = "5m"))).ok(), Some(300_000));
        assert_eq!(duration(&opt(quote!(timeout = "1h"))).ok(), Some(3_600_000));
        for bad in [
            quote!(timeout = "30"),
            quote!(timeout = "s"),
            quote!(timeout = "0s"),
            quote!(timeout = "1.5s"),
            quote!(timeout = 30),
        ] {
            assert!(duration(&opt(bad)).is_err());
        }
    }

    #[test]
    fn names_must_be_plain() {
        assert_eq!(
            identifier(&opt(quote!(name = "charge"))).ok().as_deref(),
            Some("charge")
        );
        for bad in [
            quote!(name = ""),
            quote!(name = "a b"),
            quote!(name = "a#2"),
            quote!(name = 1),
        ] {
            assert!(identifier(&opt(bad)).is_err());
        }
    }
}
