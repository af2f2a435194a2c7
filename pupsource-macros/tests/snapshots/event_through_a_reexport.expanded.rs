const _: () = {
    #[automatically_derived]
    impl app::events::pupsource::DomainEvent for OrderPlaced {
        const CONTEXT: &'static str = "Sales";
        const AGGREGATE: &'static str = "Order";
        const NAME: &'static str = "order.placed";
        const VERSION: u32 = 1u32;
        fn decode_payload<'de, D>(
            payload: D,
            version: u32,
        ) -> ::core::result::Result<Self, app::events::pupsource::DecodeError>
        where
            D: app::events::pupsource::__private::serde::Deserializer<
                'de,
                Error = app::events::pupsource::__private::serde_json::Error,
            >,
        {
            if version == 1u32 {
                return app::events::pupsource::__private::decode_exact::<
                    Self,
                    D,
                >(payload, version);
            }
            ::core::result::Result::Err(app::events::pupsource::DecodeError::UnknownVersion {
                event_type: "order.placed",
                version,
                current: 1u32,
            })
        }
    }
};
