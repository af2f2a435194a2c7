//! Expansion: turns validated models into code. Generated code names the runtime only through
//! `::pupsource::…` paths and `::core` / `::std`, so user items named `Result`, `Option` or
//! `pupsource` do not interfere; helpers live in `const _: () = { … };`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned as _;

use crate::model::{EventModel, Handlers, ProjectionModel};

pub(crate) fn event(model: &EventModel) -> TokenStream {
    let EventModel { ident, context, aggregate, name, version, upcast_from } = model;
    let upcast = upcast_from.as_ref().map(|older| {
        quote_spanned! {older.span()=>
            if version < #version {
                return <#older as ::pupsource::DomainEvent>::decode_payload(payload, version)
                    .map(<Self as ::core::convert::From<#older>>::from);
            }
        }
    });
    let checks = upcast_from.as_ref().map(|older| {
        quote_spanned! {older.span()=>
            const _: () = ::core::assert!(
                <#older as ::pupsource::DomainEvent>::VERSION < #version,
                "`upcast_from` must name an older schema version (a lower `version`)",
            );
            const _: () = ::core::assert!(
                ::pupsource::__private::same_str(<#older as ::pupsource::DomainEvent>::NAME, #name),
                "`upcast_from` must name a version of the same event (the same `name`)",
            );
        }
    });
    quote! {
        const _: () = {
            #[automatically_derived]
            impl ::pupsource::DomainEvent for #ident {
                const CONTEXT: &'static str = #context;
                const AGGREGATE: &'static str = #aggregate;
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;

                fn decode_payload(
                    payload: &::pupsource::__private::serde_json::Value,
                    version: u32,
                ) -> ::core::result::Result<Self, ::pupsource::DecodeError> {
                    if version == #version {
                        return ::pupsource::__private::decode_exact::<Self>(payload, version);
                    }
                    #upcast
                    ::core::result::Result::Err(::pupsource::DecodeError::UnknownVersion {
                        event_type: #name,
                        version,
                        current: #version,
                    })
                }
            }
            #checks
        };
    }
}

pub(crate) fn projection(model: &ProjectionModel) -> TokenStream {
    let ProjectionModel { ident, name, partitions, handlers, new, reset } = model;
    let (scope, dispatch) = match handlers {
        Handlers::Typed(events) => {
            let scope = quote! {
                ::pupsource::Scope::all()
                    .contexts([#(<#events as ::pupsource::DomainEvent>::CONTEXT),*])
                    .aggregate_types([#(<#events as ::pupsource::DomainEvent>::AGGREGATE),*])
                    .event_types([#(<#events as ::pupsource::DomainEvent>::NAME),*])
            };
            let arms = events.iter().map(|event| {
                let call = quote_spanned! {event.span()=>
                    <Self as ::pupsource::Handle<#event>>::handle(self, envelope, cx)
                };
                quote! {
                    if <#event as ::pupsource::DomainEvent>::matches(event) {
                        let envelope = ::pupsource::Envelope::<#event>::decode(event)?;
                        return #call.await;
                    }
                }
            });
            (scope, quote! { #(#arms)* ::core::result::Result::Ok(()) })
        }
        Handlers::Raw { contexts, aggregates } => {
            let scope = quote! {
                ::pupsource::Scope::all()
                    .contexts(<[&str]>::iter(&[#(#contexts),*]).copied())
                    .aggregate_types(<[&str]>::iter(&[#(#aggregates),*]).copied())
            };
            let call = quote_spanned! {ident.span()=>
                <Self as ::pupsource::HandleRaw>::handle(self, event, cx)
            };
            (scope, quote! { #call.await })
        }
    };
    let build = match new {
        Some(path) => quote! { #path() },
        None => quote_spanned! {ident.span()=> <#ident as ::core::default::Default>::default() },
    };
    let reset = reset.as_ref().map(|path| {
        quote! {
            fn reset<'a>(
                &'a self,
                transaction: &'a mut ::pupsource::projection::Transaction<'_>,
            ) -> ::pupsource::projection::HandleFuture<'a> {
                ::pupsource::__private::Box::pin(#path(self, transaction))
            }
        }
    });
    let assert_shared = quote_spanned! {ident.span()=>
        const _: () = ::pupsource::__private::assert_send_sync::<#ident>();
    };
    quote! {
        const _: () = {
            #assert_shared

            #[automatically_derived]
            impl ::pupsource::Projection for #ident {
                fn name(&self) -> &str {
                    #name
                }

                fn partitions(&self) -> u32 {
                    #partitions
                }

                fn scope(&self) -> ::pupsource::Scope {
                    #scope
                }

                fn handle<'a>(
                    &'a self,
                    event: &'a ::pupsource::PersistedEvent,
                    cx: &'a mut ::pupsource::Context<'_>,
                ) -> ::pupsource::projection::HandleFuture<'a> {
                    ::pupsource::__private::Box::pin(async move { #dispatch })
                }

                #reset
            }

            fn __pupsource_build() -> ::pupsource::__private::Arc<dyn ::pupsource::Projection> {
                ::pupsource::__private::Arc::new(#build)
            }

            ::pupsource::__private::inventory::submit! {
                ::pupsource::__private::Registration { name: #name, build: __pupsource_build }
            }
        };
    }
}

pub(crate) fn main(input: TokenStream) -> syn::Result<TokenStream> {
    if let Some(first) = input.into_iter().next() {
        return Err(syn::Error::new(
            first.span(),
            "`pupsource::main!()` takes no arguments; configure projections with `#[projection(...)]` \
             and runs with command-line flags",
        ));
    }
    Ok(quote! {
        fn main() -> ::std::process::ExitCode {
            ::pupsource::cli::App::new().main()
        }
    })
}
