"""An ultrasound autoencoder (diffusers `AutoencoderKL`), trained from scratch, for latent diffusion at 256 px."""
