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
    // `Projection: Send + Sync + 'static`: this impl, spanned at the struct's name, is the
    // compile-time check that one instance can be shared by every partition.
    let projection_impl = quote_spanned! {ident.span()=> impl ::pupsource::Projection for #ident };
    quote! {
        const _: () = {
            #[automatically_derived]
            #projection_impl {
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
             and each run with command-line flags (`--help`)",
        ));
    }
    Ok(quote! {
        fn main() -> ::std::process::ExitCode {
            ::pupsource::cli::App::new().main()
        }
    })
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use crate::model::{EventModel, ProjectionModel};
    use crate::parse::{Errors, ProjectionArgs};

    fn projection(
        args: proc_macro2::TokenStream,
        item: proc_macro2::TokenStream,
    ) -> syn::Result<ProjectionModel> {
        let mut errors = Errors::default();
        let args = ProjectionArgs::parse(args, &mut errors);
        ProjectionModel::new(&syn::parse2(item).expect("item"), args, errors)
    }

    #[test]
    fn projection_defaults_and_generated_items() {
        let model = projection(
            quote!(partitions = 4, events(A, b::B)),
            quote!(
                struct OrderTotals;
            ),
        )
        .expect("valid");
        assert_eq!((model.name.as_str(), model.partitions), ("order_totals", 4));
        let code = super::projection(&model).to_string();
        for expected in [
            "impl :: pupsource :: Projection for OrderTotals",
            "< Self as :: pupsource :: Handle < A >> :: handle",
            "< Self as :: pupsource :: Handle < b :: B >> :: handle",
            ":: pupsource :: __private :: inventory :: submit !",
            "name : \"order_totals\"",
            "< OrderTotals as :: core :: default :: Default > :: default ()",
        ] {
            assert!(code.contains(expected), "missing `{expected}` in {code}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = projection(
            quote!(partitions = 0, colour = 1, events(A, A)),
            quote!(
                enum E<T> {
                    X(T),
                }
            ),
        )
        .err()
        .expect("invalid");
        let messages: Vec<String> = err.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        assert!(messages.iter().any(|m| m.starts_with("unknown projection argument `colour`")));
        assert!(messages.iter().any(|m| m == "`partitions` must be at least 1"));
        assert!(messages.iter().any(|m| m == "`A` is listed twice in `events(...)`"));
        assert!(messages.iter().any(|m| m.starts_with("`#[projection]` must be on a struct")));
        assert!(
            messages.iter().any(|m| m.starts_with("`#[projection]` structs cannot be generic"))
        );
    }

    #[test]
    fn event_defaults_and_upcast() {
        let input: syn::DeriveInput = syn::parse_quote! {
            #[event(context = "Identity", aggregate = "User", version = 2, upcast_from = V1)]
            struct UserCreated { email: String }
        };
        let model = EventModel::from_input(&input).expect("valid");
        assert_eq!((model.name.value(), model.version), ("UserCreated".to_owned(), 2));
        let code = super::event(&model).to_string();
        assert!(
            code.contains(
                "< V1 as :: pupsource :: DomainEvent > :: decode_payload (payload , version)"
            ),
            "{code}"
        );
        assert!(code.contains("const VERSION : u32 = 2u32"), "{code}");
    }

    #[test]
    fn main_takes_no_arguments() {
        assert!(super::main(quote!()).is_ok());
        let err = super::main(quote!(workers = 4)).expect_err("arguments are refused");
        assert!(err.to_string().starts_with("`pupsource::main!()` takes no arguments"));
    }
}
