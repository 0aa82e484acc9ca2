"""The paper behind each architecture family, where we know it (timm's cfgs name a few themselves)."""

from __future__ import annotations

FAMILY_PAPERS = {
    # convforge's own zoo
    "unireplknet": "Ding et al. 2024, UniRepLKNet: A Universal Perception Large-Kernel ConvNet (arXiv:2311.15599)",
    "replknet": "Ding et al. 2022, Scaling Up Your Kernels to 31x31 (arXiv:2203.06717)",
    "hornet": "Rao et al. 2022, HorNet: Recursive Gated Convolutions (arXiv:2207.14284)",
    "ibnnet": "Pan et al. 2018, Two at Once: IBN-Net (arXiv:1807.09441)",
    "simplenet": "Hasanpour et al. 2016, Lets keep it simple (arXiv:1608.06037)",
    # timm
    "resnet": "He et al. 2016, Deep Residual Learning for Image Recognition (arXiv:1512.03385)",
    "resnetv2": "He et al. 2016, Identity Mappings in Deep Residual Networks (arXiv:1603.05027)",
    "convnext": "Liu et al. 2022, A ConvNet for the 2020s (arXiv:2201.03545)",
    "efficientnet": "Tan & Le 2019, EfficientNet: Rethinking Model Scaling for CNNs (arXiv:1905.11946)",
    "mobilenetv3": "Howard et al. 2019, Searching for MobileNetV3 (arXiv:1905.02244)",
    "mobilenetv5": "Google 2025, MobileNet V5 (Gemma 3n vision encoder)",
    "regnet": "Radosavovic et al. 2020, Designing Network Design Spaces (arXiv:2003.13678)",
    "densenet": "Huang et al. 2017, Densely Connected Convolutional Networks (arXiv:1608.06993)",
    "vgg": "Simonyan & Zisserman 2015, Very Deep Convolutional Networks (arXiv:1409.1556)",
    "inception_v3": "Szegedy et al. 2016, Rethinking the Inception Architecture (arXiv:1512.00567)",
    "inception_v4": "Szegedy et al. 2017, Inception-v4, Inception-ResNet (arXiv:1602.07261)",
    "inception_resnet_v2": "Szegedy et al. 2017, Inception-v4, Inception-ResNet (arXiv:1602.07261)",
    "xception": "Chollet 2017, Xception: Deep Learning with Depthwise Separable Convolutions (arXiv:1610.02357)",
    "xception_aligned": "Chen et al. 2018, Encoder-Decoder with Atrous Separable Convolution (arXiv:1802.02611)",
    "senet": "Hu et al. 2018, Squeeze-and-Excitation Networks (arXiv:1709.01507)",
    "sknet": "Li et al. 2019, Selective Kernel Networks (arXiv:1903.06586)",
    "res2net": "Gao et al. 2019, Res2Net: A New Multi-scale Backbone Architecture (arXiv:1904.01169)",
    "resnest": "Zhang et al. 2020, ResNeSt: Split-Attention Networks (arXiv:2004.08955)",
    "dla": "Yu et al. 2018, Deep Layer Aggregation (arXiv:1707.06484)",
    "dpn": "Chen et al. 2017, Dual Path Networks (arXiv:1707.01629)",
    "cspnet": "Wang et al. 2020, CSPNet: A New Backbone (arXiv:1911.11929)",
    "ghostnet": "Han et al. 2020, GhostNet: More Features from Cheap Operations (arXiv:1911.11907)",
    "hrnet": "Wang et al. 2020, Deep High-Resolution Representation Learning (arXiv:1908.07919)",
    "nfnet": "Brock et al. 2021, High-Performance Large-Scale Image Recognition Without Normalization "
    "(arXiv:2102.06171)",
    "rexnet": "Han et al. 2021, Rethinking Channel Dimensions for Efficient Model Design (arXiv:2007.00992)",
    "tresnet": "Ridnik et al. 2021, TResNet: High Performance GPU-Dedicated Architecture (arXiv:2003.13630)",
    "vovnet": "Lee & Park 2020, CenterMask: Real-Time Anchor-Free Instance Segmentation (arXiv:1911.06667)",
    "selecsls": "Mehta et al. 2020, XNect: Real-time Multi-Person 3D Motion Capture (arXiv:1907.00837)",
    "hardcorenas": "Nayman et al. 2021, HardCoRe-NAS (arXiv:2102.11646)",
    "byobnet": "timm's bring-your-own-blocks networks: RepVGG (arXiv:2101.03697), MobileOne (arXiv:2206.04040), "
    "GENet (arXiv:2006.14090) and more",
    "byoanet": "timm's bring-your-own-attention networks: BoTNet (arXiv:2101.11605), HaloNet (arXiv:2103.12731)",
    "repvit": "Wang et al. 2024, RepViT: Revisiting Mobile CNN From ViT Perspective (arXiv:2307.09283)",
    "repghost": "Chen et al. 2022, RepGhost: A Hardware-Efficient Ghost Module (arXiv:2211.06088)",
    "fastvit": "Vasu et al. 2023, FastViT: A Fast Hybrid Vision Transformer (arXiv:2303.14189)",
    "edgenext": "Maaz et al. 2022, EdgeNeXt (arXiv:2206.10589)",
    "inception_next": "Yu et al. 2024, InceptionNeXt: When Inception Meets ConvNeXt (arXiv:2303.16900)",
    "convmixer": "Trockman & Kolter 2022, Patches Are All You Need? (arXiv:2201.09792)",
    "mambaout": "Yu & Wang 2025, MambaOut: Do We Really Need Mamba for Vision? (arXiv:2405.07992)",
    "metaformer": "Yu et al. 2022, MetaFormer Baselines for Vision (arXiv:2210.13452)",
    "starnet": "Ma et al. 2024, Rewrite the Stars (arXiv:2403.19967)",
    "fasternet": "Chen et al. 2023, Run, Don't Walk: Chasing Higher FLOPS (arXiv:2303.03667)",
    "hgnet": "PaddlePaddle, PP-HGNet (High Performance GPU Net)",
    "lcnetv2": "PaddlePaddle, PP-LCNetV2",
    "rdnet": "Kim et al. 2024, DenseNets Reloaded (arXiv:2403.19588)",
    "efficientformer": "Li et al. 2022, EfficientFormer: Vision Transformers at MobileNet Speed (arXiv:2206.01191)",
    "efficientformer_v2": "Li et al. 2023, Rethinking Vision Transformers for MobileNet Size and Speed "
    "(arXiv:2212.08059)",
    "efficientvit_mit": "Cai et al. 2023, EfficientViT: Multi-Scale Linear Attention (arXiv:2205.14756)",
    "efficientvit_msra": "Liu et al. 2023, EfficientViT: Memory Efficient Vision Transformer (arXiv:2305.07027)",
    "mobilevit": "Mehta & Rastegari 2022, MobileViT (arXiv:2110.02178)",
    "levit": "Graham et al. 2021, LeViT: a Vision Transformer in ConvNet's Clothing (arXiv:2104.01136)",
    "vision_transformer": "Dosovitskiy et al. 2021, An Image is Worth 16x16 Words (arXiv:2010.11929)",
    "deit": "Touvron et al. 2021, Training data-efficient image transformers (arXiv:2012.12877)",
    "swin_transformer": "Liu et al. 2021, Swin Transformer (arXiv:2103.14030)",
    "swin_transformer_v2": "Liu et al. 2022, Swin Transformer V2 (arXiv:2111.09883)",
    "maxxvit": "Tu et al. 2022, MaxViT: Multi-Axis Vision Transformer (arXiv:2204.01697)",
    "focalnet": "Yang et al. 2022, Focal Modulation Networks (arXiv:2203.11926)",
    "mlp_mixer": "Tolstikhin et al. 2021, MLP-Mixer (arXiv:2105.01601)",
    "beit": "Bao et al. 2022, BEiT: BERT Pre-Training of Image Transformers (arXiv:2106.08254)",
    "eva": "Fang et al. 2023, EVA-02: A Visual Representation for Neon Genesis (arXiv:2303.11331)",
    "cait": "Touvron et al. 2021, Going deeper with Image Transformers (arXiv:2103.17239)",
    "coat": "Xu et al. 2021, Co-Scale Conv-Attentional Image Transformers (arXiv:2104.06399)",
    "convit": "d'Ascoli et al. 2021, ConViT (arXiv:2103.10697)",
    "crossvit": "Chen et al. 2021, CrossViT (arXiv:2103.14899)",
    "pvt_v2": "Wang et al. 2022, PVT v2: Improved Baselines with Pyramid Vision Transformer (arXiv:2106.13797)",
    "twins": "Chu et al. 2021, Twins: Revisiting the Design of Spatial Attention (arXiv:2104.13840)",
    "xcit": "El-Nouby et al. 2021, XCiT: Cross-Covariance Image Transformers (arXiv:2106.09681)",
    "volo": "Yuan et al. 2022, VOLO: Vision Outlooker for Visual Recognition (arXiv:2106.13112)",
    "tiny_vit": "Wu et al. 2022, TinyViT (arXiv:2207.10666)",
    "davit": "Ding et al. 2022, DaViT: Dual Attention Vision Transformers (arXiv:2204.03645)",
    "gcvit": "Hatamizadeh et al. 2023, Global Context Vision Transformers (arXiv:2206.09959)",
    "hiera": "Ryali et al. 2023, Hiera (arXiv:2306.00989)",
    "nest": "Zhang et al. 2022, Nested Hierarchical Transformer (arXiv:2105.12723)",
    "pit": "Heo et al. 2021, Rethinking Spatial Dimensions of Vision Transformers (arXiv:2103.16302)",
    "sequencer": "Tatsunami & Taki 2022, Sequencer: Deep LSTM for Image Classification (arXiv:2205.01972)",
    "tnt": "Han et al. 2021, Transformer in Transformer (arXiv:2103.00112)",
    "visformer": "Chen et al. 2021, Visformer: The Vision-friendly Transformer (arXiv:2104.12533)",
    "mvitv2": "Li et al. 2022, MViTv2 (arXiv:2112.01526)",
    "nasnet": "Zoph et al. 2018, Learning Transferable Architectures (arXiv:1707.07012)",
    "pnasnet": "Liu et al. 2018, Progressive Neural Architecture Search (arXiv:1712.00559)",
}


def paper_for(family: str, pretrained_cfg: dict | None = None) -> str | None:
    """The paper that introduced a family; else the paper timm's default weights cite (often a
    training recipe rather than the architecture, hence second choice)."""
    if family in FAMILY_PAPERS:
        return FAMILY_PAPERS[family]
    if pretrained_cfg:
        name, ids = pretrained_cfg.get("paper_name"), pretrained_cfg.get("paper_ids")
        if name or ids:
            ids = ", ".join(ids) if isinstance(ids, list | tuple) else ids
            return f"{name} ({ids})" if name and ids else (name or ids)
    return None
