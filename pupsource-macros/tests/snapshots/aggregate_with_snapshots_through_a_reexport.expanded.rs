#[derive(Default, Serialize, Deserialize)]
enum Door {
    #[default]
    Closed,
    Open,
}
const _: () = {
    #[automatically_derived]
    impl app::pupsource::aggregate::Aggregate for Door {
        const NAME: &'static str = "Door";
        const CONTEXT: &'static str = <Opened as app::pupsource::DomainEvent>::CONTEXT;
        const AGGREGATE_TYPE: &'static str = <Opened as app::pupsource::DomainEvent>::AGGREGATE;
        const IGNORED: &'static [&'static str] = &[];
        const SNAPSHOTS: ::core::option::Option<
            app::pupsource::aggregate::Snapshots<Self>,
        > = ::core::option::Option::Some(
            app::pupsource::aggregate::Snapshots::<
                Self,
            >::new(::core::num::NonZeroU64::MIN.saturating_add(99), 3),
        );
        fn apply_event(
            &mut self,
            event: &app::pupsource::Event,
        ) -> ::core::result::Result<
            app::pupsource::aggregate::Dispatch,
            app::pupsource::DecodeError,
        > {
            if let ::core::option::Option::Some(decoded) = app::pupsource::__private::decode_listed::<
                Opened,
            >(event) {
                <Self as app::pupsource::aggregate::Apply<
                    Opened,
                >>::apply(self, &decoded?);
                return ::core::result::Result::Ok(
                    app::pupsource::aggregate::Dispatch::Applied,
                );
            }
            ::core::result::Result::Ok(app::pupsource::aggregate::Dispatch::Unlisted)
        }
    }
    #[automatically_derived]
    impl app::pupsource::aggregate::EventOf<Door> for Opened {}
};
