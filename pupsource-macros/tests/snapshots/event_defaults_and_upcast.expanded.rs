const _: () = {
    #[automatically_derived]
    impl ::pupsource::DomainEvent for UserCreated {
        const CONTEXT: &'static str = "Identity";
        const AGGREGATE: &'static str = "User";
        const NAME: &'static str = "UserCreated";
        const VERSION: u32 = 2u32;
        fn decode_payload<'de, D>(
            payload: D,
            version: u32,
        ) -> ::core::result::Result<Self, ::pupsource::DecodeError>
        where
            D: ::pupsource::__private::serde::Deserializer<
                'de,
                Error = ::pupsource::__private::serde_json::Error,
            >,
        {
            if version == 2u32 {
                return ::pupsource::__private::decode_exact::<Self, D>(payload, version);
            }
            if version < 2u32 {
                return <V1 as ::pupsource::DomainEvent>::decode_payload(payload, version)
                    .map(<Self as ::core::convert::From<V1>>::from);
            }
            ::core::result::Result::Err(::pupsource::DecodeError::UnknownVersion {
                event_type: "UserCreated",
                version,
                current: 2u32,
            })
        }
    }
    const _: () = ::core::assert!(
        < V1 as ::pupsource::DomainEvent > ::VERSION < 2u32,
        "`upcast_from` must name an older schema version (a lower `version`)",
    );
    const _: () = ::core::assert!(
        ::pupsource::__private::same_str(< V1 as ::pupsource::DomainEvent > ::NAME,
        "UserCreated"),
        "`upcast_from` must name a version of the same event (the same `name`)",
    );
};
