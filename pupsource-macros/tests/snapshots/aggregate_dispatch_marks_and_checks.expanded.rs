#[derive(Default)]
struct Account {
    balance: u64,
}
const _: () = {
    #[automatically_derived]
    impl ::pupsource::aggregate::Aggregate for Account {
        const NAME: &'static str = "Account";
        const CONTEXT: &'static str = <Deposited as ::pupsource::DomainEvent>::CONTEXT;
        const AGGREGATE_TYPE: &'static str = <Deposited as ::pupsource::DomainEvent>::AGGREGATE;
        const IGNORED: &'static [&'static str] = &["Audited"];
        const SNAPSHOTS: ::core::option::Option<
            ::pupsource::aggregate::Snapshots<Self>,
        > = ::core::option::Option::None;
        fn apply_event(
            &mut self,
            event: &::pupsource::Event,
        ) -> ::core::result::Result<
            ::pupsource::aggregate::Dispatch,
            ::pupsource::DecodeError,
        > {
            if let ::core::option::Option::Some(decoded) = ::pupsource::__private::decode_listed::<
                Deposited,
            >(event) {
                <Self as ::pupsource::aggregate::Apply<
                    Deposited,
                >>::apply(self, &decoded?);
                return ::core::result::Result::Ok(
                    ::pupsource::aggregate::Dispatch::Applied,
                );
            }
            if let ::core::option::Option::Some(decoded) = ::pupsource::__private::decode_listed::<
                events::Withdrawn,
            >(event) {
                <Self as ::pupsource::aggregate::Apply<
                    events::Withdrawn,
                >>::apply(self, &decoded?);
                return ::core::result::Result::Ok(
                    ::pupsource::aggregate::Dispatch::Applied,
                );
            }
            ::core::result::Result::Ok(::pupsource::aggregate::Dispatch::Unlisted)
        }
    }
    #[automatically_derived]
    impl ::pupsource::aggregate::EventOf<Account> for Deposited {}
    #[automatically_derived]
    impl ::pupsource::aggregate::EventOf<Account> for events::Withdrawn {}
    const _: () = ::core::assert!(
        ::pupsource::__private::same_str(< events::Withdrawn as ::pupsource::DomainEvent
        > ::CONTEXT, < Deposited as ::pupsource::DomainEvent > ::CONTEXT,) &&
        ::pupsource::__private::same_str(< events::Withdrawn as ::pupsource::DomainEvent
        > ::AGGREGATE, < Deposited as ::pupsource::DomainEvent > ::AGGREGATE,),
        "`events::Withdrawn` is an event of another aggregate than `Deposited`: the events of `#[aggregate(events(...))]` must have the same `context` and `aggregate`",
    );
};
