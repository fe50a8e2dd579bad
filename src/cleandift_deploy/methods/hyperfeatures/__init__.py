"""Diffusion Hyperfeatures (Luo et al., NeurIPS 2023): an aggregation network over the 12 up-block
ResNet residual branches and over timesteps, trained on keypoint pairs with a CLIP-style loss.

schedule: timesteps and DDIM inversion; aggregation: the network; extract: UNet maps per image;
loss: the CLIP loss; train: the training loop over cached maps; graph: the one-step export;
method: the `eval pck --method hyperfeatures` plug-in; commands: `train-hyperfeatures`.

`cli/hyperfeatures.py` has the verbs. Part of `methods`: may import every package below it.
"""
