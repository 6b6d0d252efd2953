"""What every run logs whatever its metrics: timings, the counted network calls, the training loss."""

from bench.metrics.registry import Output, register_output

_CLOCK = ("after one untimed warm-up network call on the first batch's shape, each sampling batch timed between "
          "two device syncs")
for _output in (
    Output("train_seconds", "Train s", ".0f", unit="s"),
    Output("sample_seconds", "Sample s", ".1f", unit="s",
           how=f"the sum of the timed batches' seconds ({_CLOCK}), per image times the run's images"),
    Output("eval_seconds", "Eval s", ".1f", unit="s"),
    Output("seconds_per_image", "s / image", ".3g", unit="s", spread="seconds_per_image_iqr",
           how=f"the median over the run's batches of a batch's seconds per image ({_CLOCK}), so one slow "
               "batch moves it little; ± its interquartile range over the batches where the run had two or more "
               "(one batch: one measurement, no ±)"),
    Output("seconds_per_image_iqr", "s / image IQR over batches", ".2g", unit="s"),
    Output("nfe", "NFE", ".0f"),  # network calls per image, counted by the Denoiser
    Output("guided_calls", "Guided calls", ".0f"),  # of which cond + uncond in one 2B batch
    Output("visited_steps", "Visited steps", ".0f"),  # distinct timesteps of the chain (<= sample.steps)
    Output("train_loss", "Train loss", ".4f"),
):
    register_output(_output)
