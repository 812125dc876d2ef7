//! Masked image models: an encoder, a prediction head and a target, built from
//! one [`ModelConfig`], in any combination.
//!
//! MAE (`Method::Mae`):
//! ```text
//! encoder on visible tokens             (B, 1+K, D)
//! decoder_embed                         (B, 1+K, Dd)
//! append L−K mask tokens, unshuffle     (B, 1+L, Dd)   gather by ids_restore
//! + decoder_pos_embed, decoder blocks, decoder_norm
//! decoder_pred, drop [CLS]              (B, L, out)
//! ```
//! SimMIM (`Method::SimMim`), as the official code:
//! ```text
//! patch embeddings, hidden ones replaced by encoder.mask_token  (B, L, D)
//! encoder over all tokens                                       (B, 1+L, D)
//! decoder.0: a 1×1 convolution on the patch-token grid           (B, L, out)
//! pixel shuffle: channel c·p² + i·p + j → pixel (i, j) of channel c
//! ```
//! `out` is `p·p·C` for pixel targets and the codebook size for discrete ones.
//! SimMIM's tensors carry its names: the encoder's under `encoder.`, the head
//! `decoder.0.weight (out, D, 1, 1)` and `decoder.0.bias`, so official SimMIM
//! checkpoints load and Tessera's load in its code. The convolution's
//! channels are in pixel-shuffle order (channel-major); predictions are
//! reordered to MAE's patchify order `(i, j, c)` for the loss and pictures.

use crate::config::{InitScheme, Method, ModelConfig, PixelLoss, TargetConfig};
use crate::error::{MimError, Result};
use crate::layers::{Block, LayerNorm, Linear, Module, join, visit_blocks};
use crate::masking::{Mask, MimRng};
use crate::pos_embed::sincos_2d;
use crate::target::{Codebook, normalize_patches, patchify_images};
use crate::vit::{Pool, VisionTransformer};
use rand::Rng;
use tessera_kernels::patch::PatchDims;
use tessera_tensor::init::{normal, trunc_normal, uniform};
use tessera_tensor::{Tensor, no_grad};

/// MAE's decoder.
pub struct MaeDecoder {
    pub embed: Linear,
    /// `(1, 1, Dd)`.
    pub mask_token: Tensor,
    /// `(1, 1 + L, Dd)`, fixed sin-cos.
    pub pos_embed: Tensor,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub pred: Linear,
}

/// SimMIM's head: the encoder's mask token and a 1×1 convolution.
pub struct SimMimHead {
    /// `(1, 1, D)`, replaces hidden patch embeddings at the encoder's input
    /// (`encoder.mask_token`).
    pub mask_token: Tensor,
    /// `decoder.0.weight (out, D, 1, 1)`: output channels in pixel-shuffle
    /// order for pixel targets.
    pub weight: Tensor,
    /// `decoder.0.bias (out)`.
    pub bias: Tensor,
}

/// The prediction head of a model.
pub enum Head {
    Mae(MaeDecoder),
    SimMim(SimMimHead),
}

/// What one forward pass produces.
pub struct MimOutput {
    /// The loss over hidden patches (a scalar).
    pub loss: Tensor,
    /// The head's output for every patch `(B, L, out)`.
    pub pred: Tensor,
}

/// A masked image model.
pub struct MimModel {
    pub config: ModelConfig,
    pub encoder: VisionTransformer,
    pub head: Head,
    /// The visual vocabulary of a discrete target; fitted before training.
    pub codebook: Option<Codebook>,
}

impl MimModel {
    /// A freshly initialised model (MAE's initialisation).
    pub fn new<R: Rng + ?Sized>(config: ModelConfig, rng: &mut R) -> Result<MimModel> {
        config.validate()?;
        let enc = &config.encoder;
        let (d, l, out) = (enc.embed_dim, enc.num_patches(), config.output_dim());
        let encoder = VisionTransformer::new(enc.clone(), rng)?;
        let head = match &config.method {
            Method::Mae { decoder } => {
                let dd = decoder.embed_dim;
                Head::Mae(MaeDecoder {
                    embed: Linear::new(d, dd, true, rng),
                    mask_token: Tensor::param(normal(dd, 0.0, 0.02, rng), &[1, 1, dd])?,
                    pos_embed: Tensor::var(sincos_2d(dd, enc.grid(), true), &[1, 1 + l, dd])?,
                    blocks: (0..decoder.depth)
                        .map(|_| Block::new(dd, decoder.num_heads, decoder.mlp_hidden(), enc.norm_eps, rng))
                        .collect(),
                    norm: LayerNorm::new(dd, enc.norm_eps),
                    pred: Linear::new(dd, out, true, rng),
                })
            }
            Method::SimMim => {
                let (token, weight, bias) = match enc.init {
                    // MAE's style: the token normal (std 0.02), the head a
                    // linear layer's Xavier weights and zero bias.
                    InitScheme::Mae => {
                        let token = normal(d, 0.0, 0.02, rng);
                        let pred = Linear::new(d, out, true, rng);
                        (token, pred.weight.to_vec(), vec![0.0; out])
                    }
                    // SimMIM's: the token truncated at ±std; the head's
                    // convolution PyTorch's default, uniform in ±1/√D.
                    InitScheme::Beit => {
                        let bound = 1.0 / (d as f32).sqrt();
                        (
                            trunc_normal(d, 0.0, 0.02, -0.02, 0.02, rng),
                            uniform(out * d, -bound, bound, rng),
                            uniform(out, -bound, bound, rng),
                        )
                    }
                };
                Head::SimMim(SimMimHead {
                    mask_token: Tensor::param(token, &[1, 1, d])?,
                    weight: Tensor::param(weight, &[out, d, 1, 1])?, // the convolution's (out, D, 1, 1)
                    bias: Tensor::param(bias, &[out])?,
                })
            }
        };
        Ok(MimModel {
            config,
            encoder,
            head,
            codebook: None,
        })
    }

    fn patch_dims(&self, batch: usize) -> PatchDims {
        let e = &self.config.encoder;
        PatchDims::new(batch, e.in_chans, e.img_size[0], e.img_size[1], e.patch_size)
    }

    fn check_mask(&self, imgs: &Tensor, mask: &Mask) -> Result<()> {
        let (b, l) = (imgs.shape()[0], self.config.encoder.num_patches());
        if mask.batch != b || mask.num_patches != l {
            return Err(MimError::Input(format!(
                "mask for {} images of {} patches does not fit {b} images of {l} patches",
                mask.batch, mask.num_patches
            )));
        }
        Ok(())
    }

    /// The head's output `(B, L, out)` for images `(B, C, H, W)` under `mask`.
    pub fn predict(&self, imgs: &Tensor, mask: &Mask, train: bool, rng: &mut MimRng) -> Result<Tensor> {
        self.encoder.check_images(imgs)?;
        self.check_mask(imgs, mask)?;
        let l = self.config.encoder.num_patches();
        match &self.head {
            Head::Mae(dec) => {
                let latent = self.encoder.forward_visible(imgs, mask, train, rng)?; // (B, 1+K, D)
                let (b, k) = (latent.shape()[0], latent.shape()[1] - 1);
                let x = dec.embed.forward(&latent)?; // (B, 1+K, Dd)
                let dd = x.shape()[2];
                let mask_tokens = dec.mask_token.broadcast_to(&[b, l - k, dd])?; // (B, L−K, Dd)
                let shuffled = Tensor::cat(&[&x.narrow(1, 1, k)?, &mask_tokens], 1)?; // (B, L, Dd)
                let tokens = shuffled.gather_rows(&mask.ids_restore, l)?; // unshuffle
                let x = Tensor::cat(&[&x.narrow(1, 0, 1)?, &tokens], 1)?; // (B, 1+L, Dd)
                let mut x = x.add(&dec.pos_embed)?;
                for block in &dec.blocks {
                    x = block.forward(&x)?;
                }
                let x = dec.pred.forward(&dec.norm.forward(&x)?)?; // (B, 1+L, out)
                Ok(x.narrow(1, 1, l)?)
            }
            Head::SimMim(head) => {
                let x = self.encoder.embed_patches(imgs)?; // (B, L, D), positions added
                let w = mask.weights().reshape(&[mask.batch as isize, l as isize, 1])?; // 1 = hidden
                let keep = w.neg().add_scalar(1.0);
                // Positions are added to the mask token too (SimMIM adds them after masking).
                let token = match self.encoder.patch_positions()? {
                    Some(pos) => head.mask_token.add(&pos)?,
                    None => head.mask_token.clone(),
                };
                let masked = x.mul(&keep)?.add(&token.mul(&w)?)?;
                let tokens =
                    self.encoder
                        .transform(&self.encoder.prepend_cls(&masked)?, crate::vit::Tokens::All, train, rng)?; // (B, 1+L, D)
                let out = head.weight.shape()[0];
                let w = head.weight.reshape(&[out as isize, -1])?; // (out, D)
                let pred = tokens.narrow(1, 1, l)?.linear(&w, Some(&head.bias))?; // (B, L, out)
                match self.config.target {
                    // Pixel-shuffle order (c, i, j) → MAE's patchify order (i, j, c).
                    TargetConfig::Pixels { .. } => {
                        let (b, c) = (imgs.shape()[0] as isize, self.config.encoder.in_chans as isize);
                        let pp = out as isize / c;
                        Ok(pred
                            .reshape(&[b, l as isize, c, pp])?
                            .permute(&[0, 1, 3, 2])?
                            .reshape(&[b, l as isize, out as isize])?)
                    }
                    TargetConfig::Codebook { .. } => Ok(pred),
                }
            }
        }
    }

    /// The pixel targets `(B, L, p·p·C)` (normalised per patch if `norm_pix`).
    pub fn pixel_targets(&self, imgs: &Tensor, norm_pix: bool) -> Result<Tensor> {
        let _timer = tessera_tensor::profile::scope("pixel_targets", "forward");
        let b = imgs.shape()[0];
        let dims = self.patch_dims(b);
        let mut t = patchify_images(&imgs.data(), dims);
        if norm_pix {
            normalize_patches(&mut t, dims.patch_len());
        }
        Ok(Tensor::new(t, &[b, dims.l(), dims.patch_len()])?)
    }

    /// The codebook index of every patch `(B·L)`.
    pub fn code_targets(&self, imgs: &Tensor) -> Result<Vec<u32>> {
        let book = self.codebook.as_ref().ok_or_else(|| {
            MimError::Input(
                "this model predicts codebook entries but has no codebook; fit one first (MimModel::fit_codebook)"
                    .into(),
            )
        })?;
        let dims = self.patch_dims(imgs.shape()[0]);
        Ok(book.assign(&patchify_images(&imgs.data(), dims)))
    }

    /// The loss of predictions `(B, L, out)` against the images' targets,
    /// averaged over the hidden patches of `mask`.
    pub fn loss(&self, pred: &Tensor, imgs: &Tensor, mask: &Mask) -> Result<Tensor> {
        let w = mask.weights();
        Ok(match self.config.target {
            TargetConfig::Pixels { loss, norm_pix } => {
                let target = self.pixel_targets(imgs, norm_pix)?;
                match loss {
                    PixelLoss::Mse => pred.mse_loss(&target, Some(&w))?,
                    PixelLoss::L1 => pred.l1_loss(&target, Some(&w))?,
                }
            }
            TargetConfig::Codebook { .. } => pred.cross_entropy(&self.code_targets(imgs)?, Some(&w))?,
        })
    }

    /// Prediction and loss in one call.
    pub fn forward(&self, imgs: &Tensor, mask: &Mask, train: bool, rng: &mut MimRng) -> Result<MimOutput> {
        let pred = self.predict(imgs, mask, train, rng)?;
        let loss = self.loss(&pred, imgs, mask)?;
        Ok(MimOutput { loss, pred })
    }

    /// Frozen-encoder features `(B, D)` for evaluation: no mask, no dropout,
    /// no graph.
    pub fn features(&self, imgs: &Tensor, pool: Pool) -> Result<Tensor> {
        no_grad(|| self.encoder.features(imgs, pool))
    }

    /// Fits the codebook of a discrete target on training images
    /// `(N, C, H, W)` (every patch of every image).
    pub fn fit_codebook(&mut self, imgs: &Tensor, iters: usize, rng: &mut MimRng) -> Result<()> {
        let TargetConfig::Codebook { size, normalize } = self.config.target else {
            return Err(MimError::Input(
                "this model's target is pixels; it has no codebook to fit".into(),
            ));
        };
        self.encoder.check_images(imgs)?;
        let dims = self.patch_dims(imgs.shape()[0]);
        let patches = patchify_images(&imgs.data(), dims);
        self.codebook = Some(Codebook::fit(&patches, dims.patch_len(), size, normalize, iters, rng)?);
        Ok(())
    }

    /// Every tensor the model owns, with MAE's `state_dict` names.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.named_tensors()
    }

    /// The tensors an optimizer updates (those requiring gradients).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.named_tensors()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }
}

impl Module for MimModel {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(String, &Tensor)) {
        match &self.head {
            Head::Mae(dec) => {
                self.encoder.visit(prefix, f);
                f(join(prefix, "mask_token"), &dec.mask_token);
                f(join(prefix, "decoder_pos_embed"), &dec.pos_embed);
                dec.embed.visit(&join(prefix, "decoder_embed"), f);
                visit_blocks(&dec.blocks, &join(prefix, "decoder_blocks"), f);
                dec.norm.visit(&join(prefix, "decoder_norm"), f);
                dec.pred.visit(&join(prefix, "decoder_pred"), f);
            }
            Head::SimMim(head) => {
                let encoder = join(prefix, "encoder");
                self.encoder.visit(&encoder, f);
                f(join(&encoder, "mask_token"), &head.mask_token);
                f(join(prefix, "decoder.0.weight"), &head.weight);
                f(join(prefix, "decoder.0.bias"), &head.bias);
            }
        }
    }
}
