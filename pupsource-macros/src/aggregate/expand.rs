//! The `Aggregate` impl of a validated aggregate, the `EventOf` marks of its events, and the
//! compile-time check that its events share one context and aggregate type. Generated code
//! names the runtime only through the aggregate's runtime path and `::core`; it lives in
//! `const _: () = { … };`.

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned as _;

use super::model::{Aggregate, Snapshots};

pub(super) fn tokens(aggregate: &Aggregate) -> TokenStream {
    let Aggregate { runtime, ident, events, ignore, snapshots } = aggregate;
    let name = ident.to_string();
    // The model guarantees at least one event.
    let Some(first) = events.first() else {
        return TokenStream::new();
    };
    let arms = events.iter().map(|event| {
        // The caret of a missing `Apply` impl goes to the listed event.
        let call = quote_spanned! {event.span()=>
            <Self as #runtime::aggregate::Apply<#event>>::apply
        };
        quote! {
            if let ::core::option::Option::Some(decoded) =
                #runtime::__private::decode_listed::<#event>(event)
            {
                #call(self, &decoded?);
                return ::core::result::Result::Ok(#runtime::aggregate::Dispatch::Applied);
            }
        }
    });
    let marks = events.iter().map(|event| {
        quote_spanned! {event.span()=>
            #[automatically_derived]
            impl #runtime::aggregate::EventOf<#ident> for #event {}
        }
    });
    let same_aggregate = events.iter().skip(1).map(|event| {
        let message = format!(
            "`{}` is an event of another aggregate than `{}`: the events of \
             `#[aggregate(events(...))]` must have the same `context` and `aggregate`",
            quote!(#event).to_string().replace(' ', ""),
            quote!(#first).to_string().replace(' ', ""),
        );
        quote_spanned! {event.span()=>
            const _: () = ::core::assert!(
                #runtime::__private::same_str(
                    <#event as #runtime::DomainEvent>::CONTEXT,
                    <#first as #runtime::DomainEvent>::CONTEXT,
                ) && #runtime::__private::same_str(
                    <#event as #runtime::DomainEvent>::AGGREGATE,
                    <#first as #runtime::DomainEvent>::AGGREGATE,
                ),
                #message,
            );
        }
    });
    let snapshots = match snapshots {
        Some(Snapshots { every, version }) => {
            let minus_one = Literal::u64_unsuffixed(u64::from(every.value.get()) - 1);
            let version = Literal::u32_unsuffixed(version.value.get());
            // The caret of a state without serde impls goes to `snapshot_every = …`.
            quote_spanned! {every.span=>
                ::core::option::Option::Some(#runtime::aggregate::Snapshots::<Self>::new(
                    ::core::num::NonZeroU64::MIN.saturating_add(#minus_one),
                    #version,
                ))
            }
        }
        None => quote!(::core::option::Option::None),
    };
    // `Aggregate: Default + Send + 'static`: this impl, spanned at the type's name, is where
    // rustc reports a missing bound.
    let aggregate_impl = quote_spanned! {ident.span()=>
        impl #runtime::aggregate::Aggregate for #ident
    };
    quote! {
        const _: () = {
            #[automatically_derived]
            #aggregate_impl {
                const NAME: &'static str = #name;
                const CONTEXT: &'static str = <#first as #runtime::DomainEvent>::CONTEXT;
                const AGGREGATE_TYPE: &'static str = <#first as #runtime::DomainEvent>::AGGREGATE;
                const IGNORED: &'static [&'static str] = &[#(#ignore),*];
                const SNAPSHOTS: ::core::option::Option<#runtime::aggregate::Snapshots<Self>> =
                    #snapshots;

                fn apply_event(
                    &mut self,
                    event: &#runtime::Event,
                ) -> ::core::result::Result<#runtime::aggregate::Dispatch, #runtime::DecodeError> {
                    #(#arms)*
                    ::core::result::Result::Ok(#runtime::aggregate::Dispatch::Unlisted)
                }
            }

            #(#marks)*

            #(#same_aggregate)*
        };
    }
}
