#[derive(Default)]
struct OrderTotals;
const _: () = {
    #[automatically_derived]
    impl ::pupsource::Projection for OrderTotals {
        fn name(&self) -> &str {
            "order_totals"
        }
        fn partitions(&self) -> u32 {
            4u32
        }
        fn scope(&self) -> ::pupsource::Scope {
            ::pupsource::Scope::all()
                .contexts([
                    <A as ::pupsource::DomainEvent>::CONTEXT,
                    <b::B as ::pupsource::DomainEvent>::CONTEXT,
                ])
                .aggregate_types([
                    <A as ::pupsource::DomainEvent>::AGGREGATE,
                    <b::B as ::pupsource::DomainEvent>::AGGREGATE,
                ])
                .event_types([
                    <A as ::pupsource::DomainEvent>::NAME,
                    <b::B as ::pupsource::DomainEvent>::NAME,
                ])
        }
        fn handle<'a>(
            &'a self,
            event: &'a ::pupsource::LogEvent,
            cx: &'a mut ::pupsource::Context<'_>,
        ) -> ::pupsource::projection::HandleFuture<'a> {
            ::pupsource::__private::Box::pin(async move {
                if event.is::<A>() {
                    let envelope = event.decode::<A>()?;
                    return <Self as ::pupsource::Handle<A>>::handle(self, envelope, cx)
                        .await;
                }
                if event.is::<b::B>() {
                    let envelope = event.decode::<b::B>()?;
                    return <Self as ::pupsource::Handle<
                        b::B,
                    >>::handle(self, envelope, cx)
                        .await;
                }
                ::core::result::Result::Ok(())
            })
        }
    }
    const _: () = ::core::assert!(
        4 <= ::pupsource::__private::MAX_PARTITIONS, "{}",
        ::pupsource::__private::TOO_MANY_PARTITIONS,
    );
    fn __pupsource_build() -> ::pupsource::__private::Arc<dyn ::pupsource::Projection> {
        ::pupsource::__private::Arc::new({
            <OrderTotals as ::core::default::Default>::default()
        })
    }
    ::pupsource::__private::inventory::submit! {
        ::pupsource::__private::Registration { name : "order_totals", build :
        __pupsource_build }
    }
};
