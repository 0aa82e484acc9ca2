"""The zoo's blocks learn, not only run: a tiny UniRepLKNet trained in seconds through `convforge.train`."""

from __future__ import annotations

import torch

from convforge import TrainConfig, load_model, reparameterize_model, train
from convforge.data import load_dataset
from convforge.train import evaluate

DATA = "shapes:size=32,train=3000,val=0,test=600,classes=3"


def test_tiny_unireplknet_learns_shapes_and_folds_without_changing_a_prediction(tmp_path):
    """Three shape classes (chance: 33%); the tiny UniRepLKNet reaches about 50% in 8 short epochs
    (about 25 s on 2 CPU cores). The bar, 42%, is more than four standard errors above chance."""
    config = TrainConfig(data=DATA, model="unireplknet_tiny_test", epochs=8, batch_size=32, lr=4e-3, crop="none",
                         val_fraction=0.0, model_kwargs={"dims": [8, 16, 24, 32], "global_pool": "max"})  # fmt: skip
    result = train(config, tmp_path / "uni")
    assert result.test.top1 >= 0.42

    model, spec = load_model(result.run.path)
    test = load_dataset(DATA).test
    folded = reparameterize_model(model)
    plain = evaluate(model, test, spec.preprocessing)
    deployed = evaluate(folded, test, spec.preprocessing)
    assert (deployed.predictions == plain.predictions).all()
    assert sum(p.numel() for p in folded.parameters()) < sum(p.numel() for p in model.parameters())
    assert isinstance(folded.stages[1].blocks[0].dwconv.lk_origin.bias, torch.nn.Parameter)
