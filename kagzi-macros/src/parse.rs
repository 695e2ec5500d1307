//! Parsing: the attribute's `key = value` options and the annotated item, as written.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ItemFn, Lit, Meta, Token};

/// One `key = value` option of an attribute, not yet checked.
pub(crate) struct Opt {
    /// The option name.
    pub(crate) key: syn::Ident,
    /// The value, a literal.
    pub(crate) value: Lit,
}

/// Parse the attribute's arguments: a comma-separated list of `key = literal`.
/// `valid` lists the option names, for the error messages.
pub(crate) fn options(args: TokenStream, valid: &str) -> syn::Result<Vec<Opt>> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
    let mut options = Vec::new();
    let mut errors: Option<syn::Error> = None;
    for meta in metas {
        match option(meta, valid) {
            Ok(option) => options.push(option),
            Err(error) => combine(&mut errors, error),
        }
    }
    match errors {
        Some(errors) => Err(errors),
        None => Ok(options),
    }
}

fn option(meta: Meta, valid: &str) -> syn::Result<Opt> {
    let path = meta.path();
    let Some(key) = path.get_ident().cloned() else {
        return Err(syn::Error::new(
            path.span(),
            format!("unknown option; expected one of: {valid}"),
        ));
    };
    match meta {
        Meta::NameValue(nv) => match nv.value {
            Expr::Lit(ExprLit { lit, .. }) => Ok(Opt { key, value: lit }),
            other => Err(syn::Error::new(
                other.span(),
                format!("the value of `{key}` must be a literal"),
            )),
        },
        Meta::Path(_) | Meta::List(_) => Err(syn::Error::new(
            meta.span(),
            format!("expected `{key} = value`; options are written `key = value`, one of: {valid}"),
        )),
    }
}

/// Parse the annotated item as a fn.
pub(crate) fn item_fn(item: TokenStream, attr: &str) -> syn::Result<ItemFn> {
    syn::parse2::<ItemFn>(item)
        .map_err(|e| syn::Error::new(e.span(), format!("#[{attr}] goes on an `async fn`: {e}")))
}

/// Add `error` to the errors collected so far.
pub(crate) fn combine(errors: &mut Option<syn::Error>, error: syn::Error) {
    match errors {
        Some(errors) => errors.combine(error),
        None => *errors = Some(error),
    }
}
