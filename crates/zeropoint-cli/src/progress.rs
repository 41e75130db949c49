//! Progress bars on stderr, for the stages that stream data (calibrating, measuring, evaluating).

/// Progress on stderr (hidden when stderr is not a terminal).
pub fn bar() -> impl FnMut(&str, usize, usize) {
    let mut bar: Option<(String, indicatif::ProgressBar)> = None;
    move |stage: &str, done: usize, total: usize| {
        if bar.as_ref().is_none_or(|(s, _)| s != stage) {
            if let Some((_, b)) = &bar {
                b.finish_and_clear();
            }
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {pos}/{len} samples {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_message(stage.to_string());
            bar = Some((stage.to_string(), b));
        }
        if let Some((_, b)) = &bar {
            b.set_position(done as u64);
            if done >= total {
                b.finish_and_clear();
            }
        }
    }
}
