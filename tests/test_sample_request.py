"""Issue 27: the sampling settings reach the sampler as one object, built once from the study's
sample section; each rule is checked by one function, for study validation and for the run."""

from dataclasses import fields

import pytest
import torch

from bench.core.config import RunConfig
from bench.core.errors import BenchError
from bench.diffusion import Diffusion, SampleRequest, check_request


class TinyNet(torch.nn.Module):
    def __init__(self, channels=1):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels + 1, channels, 3, padding=1)

    def forward(self, x, t, y=None):
        tt = (t.float() / 1000).view(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return self.conv(torch.cat([x, tt], 1))


def test_request_of_a_sample_section_carries_every_setting_it_names():
    spec = RunConfig().sample
    req = SampleRequest.of(spec)
    for f in fields(SampleRequest):
        if hasattr(spec, f.name):
            want = getattr(spec, f.name)
            assert getattr(req, f.name) == (want.as_dict() if hasattr(want, "as_dict") else want), f.name


def test_request_and_keywords_sample_the_same_images():
    d = Diffusion("linear", 100)
    net = TinyNet(1)
    kw = dict(sampler="heun", steps=6, spacing="karras", options={"s_churn": 0.5}, clip_denoised=True)
    a = d.sample(net, (3, 1, 4, 4), seeds=[0, 1, 2], **kw)
    b = d.sample(net, (3, 1, 4, 4), SampleRequest(**kw), seeds=[0, 1, 2])
    c = d.sample(net, (3, 1, 4, 4), SampleRequest(sampler="heun", steps=2), seeds=[0, 1, 2], steps=6,
                 spacing="karras", options={"s_churn": 0.5}, clip_denoised=True)  # keywords replace fields
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("settings,match", [
    ({"samplr": "ddim"}, "no setting 'samplr'. Did you mean 'sampler'"),
    ({"sampler": "eulerr"}, "unknown sampler"),
    ({"eta": 2.0}, r"outside \[0, 1\]"),
    ({"sampler": "heun", "options": {"order": 2}}, "has no option 'order'"),
    ({"guidance_method": "cfgg"}, "guidance"),
    ({"guidance_batch": "both"}, "guidance_batch = 'both' is not one of"),
])
def test_one_rule_one_message_for_the_run_and_for_validation(settings, match):
    with pytest.raises(BenchError, match=match):
        Diffusion("linear", 100).sample(TinyNet(1), (2, 1, 4, 4), steps=3, **settings)
    if "samplr" not in settings:  # the same function, before any work
        with pytest.raises(BenchError, match=match):
            check_request(SampleRequest(**settings))
