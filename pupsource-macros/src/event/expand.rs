//! The `DomainEvent` impl of a validated event, and the compile-time checks of its
//! `upcast_from`. Generated code names the runtime only through the event's runtime path and
//! `::core`; it lives in `const _: () = { … };`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned as _;

use super::model::Event;

pub(super) fn tokens(event: &Event) -> TokenStream {
    let Event { runtime, ident, context, aggregate, name, version, upcast_from } = event;
    let version = version.get();
    let upcast = upcast_from.as_ref().map(|older| {
        quote_spanned! {older.span()=>
            if version < #version {
                return <#older as #runtime::DomainEvent>::decode_payload(payload, version)
                    .map(<Self as ::core::convert::From<#older>>::from);
            }
        }
    });
    // rustc evaluates these with the caret on the user's `upcast_from = …`.
    let checks = upcast_from.as_ref().map(|older| {
        quote_spanned! {older.span()=>
            const _: () = ::core::assert!(
                <#older as #runtime::DomainEvent>::VERSION < #version,
                "`upcast_from` must name an older schema version (a lower `version`)",
            );
            const _: () = ::core::assert!(
                #runtime::__private::same_str(<#older as #runtime::DomainEvent>::NAME, #name),
                "`upcast_from` must name a version of the same event (the same `name`)",
            );
        }
    });
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #runtime::DomainEvent for #ident {
                const CONTEXT: &'static str = #context;
                const AGGREGATE: &'static str = #aggregate;
                const NAME: &'static str = #name;
                const VERSION: u32 = #version;

                fn decode_payload<'de, D>(
                    payload: D,
                    version: u32,
                ) -> ::core::result::Result<Self, #runtime::DecodeError>
                where
                    D: #runtime::__private::serde::Deserializer<
                        'de,
                        Error = #runtime::__private::serde_json::Error,
                    >,
                {
                    if version == #version {
                        return #runtime::__private::decode_exact::<Self, D>(payload, version);
                    }
                    #upcast
                    ::core::result::Result::Err(#runtime::DecodeError::UnknownVersion {
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
