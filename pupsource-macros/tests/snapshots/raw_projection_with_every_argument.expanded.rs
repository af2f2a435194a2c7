struct Publisher {
    endpoint: String,
}
const _: () = {
    #[automatically_derived]
    impl app::pupsource::Projection for Publisher {
        fn name(&self) -> &str {
            "publisher"
        }
        fn partitions(&self) -> u32 {
            1u32
        }
        fn scope(&self) -> app::pupsource::Scope {
            app::pupsource::Scope::all()
                .contexts(<[&str]>::iter(&["Sales"]).copied())
                .aggregate_types(<[&str]>::iter(&["Order", "Invoice"]).copied())
        }
        fn handle<'a>(
            &'a self,
            event: &'a app::pupsource::LogEvent,
            cx: &'a mut app::pupsource::Context<'_>,
        ) -> app::pupsource::projection::HandleFuture<'a> {
            app::pupsource::__private::Box::pin(async move {
                let event = event.to_persisted()?;
                <Self as app::pupsource::HandleRaw>::handle(self, &event, cx).await
            })
        }
        fn reset<'a>(
            &'a self,
            transaction: &'a mut app::pupsource::projection::Transaction<'_>,
        ) -> app::pupsource::projection::HandleFuture<'a> {
            app::pupsource::__private::reset(Publisher::clear(self, transaction))
        }
    }
    const _: () = ::core::assert!(
        1 <= app::pupsource::__private::MAX_PARTITIONS, "{}",
        app::pupsource::__private::TOO_MANY_PARTITIONS,
    );
    fn __pupsource_build() -> app::pupsource::__private::Arc<
        dyn app::pupsource::Projection,
    > {
        app::pupsource::__private::Arc::new({
            let new: fn() -> Publisher = Publisher::connect;
            new()
        })
    }
    app::pupsource::__private::inventory::submit! {
        app::pupsource::__private::Registration { name : "publisher", build :
        __pupsource_build }
    }
};
