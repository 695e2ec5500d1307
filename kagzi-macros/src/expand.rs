//! Expansion: turn a checked model into code. Every path into Kagzi is absolute
//! (`::kagzi::...`), and the user's fn body is kept as it was, in an inner fn.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{Attribute, Lifetime, Type};

use crate::validate::{Step, Workflow, binding};

/// The expansion of `#[workflow]`: a unit struct named like the fn, implementing
/// `kagzi::Workflow` with the fn as its body.
pub(crate) fn workflow(model: Workflow) -> TokenStream {
    let Workflow {
        name,
        queue,
        retries,
        func,
        input,
        output,
    } = model;
    let (outer, inner) = split_attrs(&func.attrs);
    let cfgs: Vec<&Attribute> = outer
        .iter()
        .copied()
        .filter(|a| a.path().is_ident("cfg"))
        .collect();
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let sig = &func.sig;
    let block = &func.block;
    let queue = match queue {
        Some(queue) => quote!(::core::option::Option::Some(#queue)),
        None => quote!(::core::option::Option::None),
    };
    let output_type =
        quote_spanned!(output.span()=> <#output as ::kagzi::__private::WorkflowResult>::Output);
    let into_result =
        quote_spanned!(output.span()=> ::kagzi::__private::WorkflowResult::into_result);
    let ctx = Ident::mixed("__kagzi_ctx");
    let arg = Ident::mixed("__kagzi_input");
    let (input_ty, call) = match &input {
        Some(ty) => (quote!(#ty), quote!(#ident(#ctx, #arg))),
        None => (quote!(()), quote!({ let () = #arg; #ident(#ctx) })),
    };
    quote! {
        #(#outer)*
        #[allow(non_camel_case_types)]
        #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug, ::core::default::Default)]
        #vis struct #ident;

        #(#cfgs)*
        impl ::kagzi::Workflow for #ident {
            type Input = #input_ty;
            type Output = #output_type;
            const NAME: &'static str = #name;
            const QUEUE: ::core::option::Option<&'static str> = #queue;
            const RETRIES: u32 = #retries;

            fn run(
                &self,
                #ctx: ::kagzi::WorkflowContext,
                #arg: Self::Input,
            ) -> impl ::core::future::Future<
                Output = ::kagzi::__private::anyhow::Result<Self::Output>,
            > + ::core::marker::Send + 'static {
                #(#inner)*
                #sig #block

                async move {
                    #into_result(#call.await)
                }
            }
        }
    }
}

/// The expansion of `#[step]`: a plain fn with the same name and parameters that takes the
/// step's key when called and returns the future that replays or runs the user's fn.
pub(crate) fn step(model: Step) -> TokenStream {
    let Step {
        name,
        attempts,
        backoff_ms,
        max_backoff_ms,
        timeout_ms,
        func,
        params,
        output,
    } = model;
    let (outer, inner) = split_attrs(&func.attrs);
    let vis = &func.vis;
    let ident = &func.sig.ident;
    let sig = &func.sig;
    let block = &func.block;

    // The outer fn names every lifetime, so that its `impl Future` can capture them all in
    // any edition.
    let mut namer = LifetimeNamer::default();
    let mut generics = func.sig.generics.clone();
    let mut args = Vec::new();
    let mut arg_types = Vec::new();
    for (i, param) in params.iter().enumerate() {
        let arg = binding(&param.pat)
            .cloned()
            .unwrap_or_else(|| Ident::mixed(&format!("__kagzi_arg{i}")));
        let mut ty = (*param.ty).clone();
        namer.visit_type_mut(&mut ty);
        args.push(arg);
        arg_types.push(ty);
    }
    for lifetime in &namer.named {
        generics.params.push(syn::parse_quote!(#lifetime));
    }
    let lifetimes: Vec<&Lifetime> = generics.lifetimes().map(|l| &l.lifetime).collect();
    let (impl_generics, _, _) = generics.split_for_impl();

    let mut options = quote!(::kagzi::__private::StepOptions::new(#name));
    if let Some(attempts) = attempts {
        options.extend(quote!(.attempts(#attempts)));
    }
    if let Some(ms) = backoff_ms {
        options.extend(quote!(.backoff_ms(#ms)));
    }
    if let Some(ms) = max_backoff_ms {
        options.extend(quote!(.max_backoff_ms(#ms)));
    }
    if let Some(ms) = timeout_ms {
        options.extend(quote!(.timeout_ms(#ms)));
    }

    let attempt = if attempts.unwrap_or(1) > 1 {
        // Each attempt gets its own copy of the arguments.
        let clones = args
            .iter()
            .zip(&arg_types)
            .map(|(arg, ty)| quote_spanned!(ty.span()=> ::core::clone::Clone::clone(&#arg)));
        quote! {
            move || ::core::option::Option::Some(#ident(#(#clones),*))
        }
    } else {
        // One attempt: the arguments move into it.
        let held = Ident::mixed("__kagzi_args");
        quote! {{
            let mut #held = ::core::option::Option::Some((#(#args,)*));
            move || {
                let (#(#args,)*) = #held.take()?;
                ::core::option::Option::Some(#ident(#(#args),*))
            }
        }}
    };

    quote! {
        #(#outer)*
        #vis fn #ident #impl_generics (#(#args: #arg_types),*)
            -> impl ::core::future::Future<Output = #output> + ::core::marker::Send + use<#(#lifetimes),*>
        {
            #(#inner)*
            #sig #block

            ::kagzi::__private::step::<#output, _, _>(#options, #attempt)
        }
    }
}

/// Split the fn's attributes: docs, `cfg`, `deprecated` and lint levels go on the generated
/// item (lint levels on both); everything else (e.g. `#[tracing::instrument]`) on the inner
/// fn that holds the body.
fn split_attrs(attrs: &[Attribute]) -> (Vec<&Attribute>, Vec<&Attribute>) {
    let mut outer = Vec::new();
    let mut inner = Vec::new();
    for attr in attrs {
        let path = attr.path();
        let lint = ["allow", "warn", "deny", "expect", "forbid"]
            .iter()
            .any(|l| path.is_ident(l));
        if lint {
            outer.push(attr);
            inner.push(attr);
        } else if ["doc", "cfg", "deprecated"]
            .iter()
            .any(|o| path.is_ident(o))
        {
            outer.push(attr);
        } else {
            inner.push(attr);
        }
    }
    (outer, inner)
}

/// Gives every elided lifetime (`&T`, `'_`) in a type a fresh name.
#[derive(Default)]
struct LifetimeNamer {
    named: Vec<Lifetime>,
}

impl LifetimeNamer {
    fn fresh(&mut self, span: Span) -> Lifetime {
        let lifetime = Lifetime::new(&format!("'__kagzi_{}", self.named.len()), span);
        self.named.push(lifetime.clone());
        lifetime
    }
}

impl VisitMut for LifetimeNamer {
    fn visit_type_reference_mut(&mut self, node: &mut syn::TypeReference) {
        if node.lifetime.is_none() {
            node.lifetime = Some(self.fresh(node.and_token.span));
        }
        syn::visit_mut::visit_type_reference_mut(self, node);
    }

    fn visit_lifetime_mut(&mut self, node: &mut Lifetime) {
        if node.ident == "_" {
            *node = self.fresh(node.span());
        }
    }

    fn visit_type_mut(&mut self, node: &mut Type) {
        // `fn(&T)` binds its own lifetimes; leave it alone.
        if !matches!(node, Type::BareFn(_)) {
            syn::visit_mut::visit_type_mut(self, node);
        }
    }

    fn visit_parenthesized_generic_arguments_mut(
        &mut self,
        _: &mut syn::ParenthesizedGenericArguments,
    ) {
        // `dyn Fn(&T) -> &U` binds its own lifetimes too.
    }
}

/// Identifiers private to the generated code (mixed-site hygiene: they cannot clash with
/// the user's names).
struct Ident;

impl Ident {
    fn mixed(name: &str) -> syn::Ident {
        format_ident!("{}", name, span = Span::mixed_site())
    }
}
