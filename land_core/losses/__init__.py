"""Loss terms shared by the trainers (and, for the MedicalNet backbone, by the metrics).

``vae``: the VAE's perceptual term from a local MedicalNet ResNet file, discriminator feature
matching (the weight-free fallback) and the KL term. The histogram regulariser joins here.
"""
