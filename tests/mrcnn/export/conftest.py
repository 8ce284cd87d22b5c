import pytest
import torch

from tests.mrcnn.scenes import make_batch, tiny_model


@pytest.fixture(scope="module")
def trained():
    """tiny_model (shapes_small, slimmer) after 40 steps on two scenes: real, confident
    detections of two classes."""
    batch, _ = make_batch()
    model = tiny_model()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model.total_loss(model(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
