"""What every run logs whatever its metrics: timings, the counted network calls, the training loss."""

from bench.metrics.registry import Output, register_output

for _output in (
    Output("train_seconds", "Train s", ".0f", unit="s"),
    Output("sample_seconds", "Sample s", ".1f", unit="s"),
    Output("eval_seconds", "Eval s", ".1f", unit="s"),
    Output("seconds_per_image", "s / image", ".3g", unit="s"),
    Output("nfe", "NFE", ".0f"),  # network calls per image, counted by the Denoiser
    Output("guided_calls", "Guided calls", ".0f"),  # of which cond + uncond in one 2B batch
    Output("visited_steps", "Visited steps", ".0f"),  # distinct timesteps of the chain (<= sample.steps)
    Output("train_loss", "Train loss", ".4f"),
):
    register_output(_output)
