//! The `Projection` impl of a validated projection, its registration, and the compile-time
//! check of its partition count. Generated code names the runtime only through the
//! projection's runtime path and `::core`; it lives in `const _: () = { … };`.

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned as _;

use super::model::{Handlers, Projection};

pub(super) fn tokens(projection: &Projection) -> TokenStream {
    let Projection { runtime, ident, name, partitions, handlers, new, reset } = projection;
    let (scope, dispatch) = match handlers {
        Handlers::Typed(events) => {
            let scope = quote! {
                #runtime::Scope::all()
                    .contexts([#(<#events as #runtime::DomainEvent>::CONTEXT),*])
                    .aggregate_types([#(<#events as #runtime::DomainEvent>::AGGREGATE),*])
                    .event_types([#(<#events as #runtime::DomainEvent>::NAME),*])
            };
            let arms = events.iter().map(|event| {
                let call = quote_spanned! {event.span()=>
                    <Self as #runtime::Handle<#event>>::handle(self, envelope, cx)
                };
                quote! {
                    if event.is::<#event>() {
                        let envelope = event.decode::<#event>()?;
                        return #call.await;
                    }
                }
            });
            (scope, quote! { #(#arms)* ::core::result::Result::Ok(()) })
        }
        Handlers::Raw { contexts, aggregates } => {
            let scope = quote! {
                #runtime::Scope::all()
                    .contexts(<[&str]>::iter(&[#(#contexts),*]).copied())
                    .aggregate_types(<[&str]>::iter(&[#(#aggregates),*]).copied())
            };
            let call = quote_spanned! {ident.span()=>
                <Self as #runtime::HandleRaw>::handle(self, &event, cx)
            };
            (
                scope,
                quote! {
                    let event = event.to_persisted()?;
                    #call.await
                },
            )
        }
    };
    let build = match new {
        // A function pointer, so that a wrong signature is one error at the user's path.
        Some(path) => {
            let mut ty = ident.clone();
            ty.set_span(path.span());
            quote_spanned! {path.span()=>
                let new: fn() -> #ty = #path;
                new()
            }
        }
        None => quote_spanned! {ident.span()=> <#ident as ::core::default::Default>::default() },
    };
    let reset = reset.as_ref().map(|path| {
        // The caret of a wrong signature goes to the user's path; the arguments are the
        // macro's, so that rustc suggests no edit of the user's path for them.
        let arguments = quote!(self, transaction);
        let call = quote_spanned! {path.span()=>
            #runtime::__private::reset(#path(#arguments))
        };
        quote! {
            fn reset<'a>(
                &'a self,
                transaction: &'a mut #runtime::projection::Transaction<'_>,
            ) -> #runtime::projection::HandleFuture<'a> {
                #call
            }
        }
    });
    // The runtime's limit, asserted against the runtime's own constant with the caret on the
    // user's `partitions = …`.
    let count = partitions.value.get();
    let literal = {
        let mut literal = Literal::u32_unsuffixed(count);
        literal.set_span(partitions.span);
        literal
    };
    let partitions_check = quote_spanned! {partitions.span=>
        const _: () = ::core::assert!(
            #literal <= #runtime::__private::MAX_PARTITIONS,
            "{}",
            #runtime::__private::TOO_MANY_PARTITIONS,
        );
    };
    // `Projection: Send + Sync + 'static`: this impl, spanned at the struct's name, is the
    // compile-time check that one instance can be shared by every partition.
    let projection_impl = quote_spanned! {ident.span()=> impl #runtime::Projection for #ident };
    quote! {
        const _: () = {
            #[automatically_derived]
            #projection_impl {
                fn name(&self) -> &str {
                    #name
                }

                fn partitions(&self) -> u32 {
                    #count
                }

                fn scope(&self) -> #runtime::Scope {
                    #scope
                }

                fn handle<'a>(
                    &'a self,
                    event: &'a #runtime::LogEvent,
                    cx: &'a mut #runtime::Context<'_>,
                ) -> #runtime::projection::HandleFuture<'a> {
                    #runtime::__private::Box::pin(async move { #dispatch })
                }

                #reset
            }

            #partitions_check

            fn __pupsource_build() -> #runtime::__private::Arc<dyn #runtime::Projection> {
                #runtime::__private::Arc::new({ #build })
            }

            #runtime::__private::inventory::submit! {
                #runtime::__private::Registration { name: #name, build: __pupsource_build }
            }
        };
    }
}
