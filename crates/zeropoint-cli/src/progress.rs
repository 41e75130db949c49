//! Progress bars on stderr, for the stages that stream data (calibrating, measuring, evaluating).

/// Progress on stderr (hidden when stderr is not a terminal). A stage may carry a detail after
/// a tab ("AdaRound\tconv_4: loss ..."): the bar is the stage's, the detail its message.
pub fn bar() -> impl FnMut(&str, usize, usize) {
    let mut bar: Option<(String, indicatif::ProgressBar)> = None;
    move |stage: &str, done: usize, total: usize| {
        let (stage, detail) = stage.split_once('\t').unwrap_or((stage, ""));
        if bar.as_ref().is_none_or(|(s, _)| s != stage) {
            if let Some((_, b)) = &bar {
                b.finish_and_clear();
            }
            // The bar sees every stage change: the one moment the last stage's memory is free.
            crate::return_freed_memory();
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>12} [{bar:30}] {pos}/{len} {elapsed} (eta {eta}) {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(stage.to_string());
            bar = Some((stage.to_string(), b));
        }
        if let Some((_, b)) = &bar {
            b.set_message(detail.to_string());
            b.set_position(done as u64);
            if done >= total {
                b.finish_and_clear();
            }
        }
    }
}
