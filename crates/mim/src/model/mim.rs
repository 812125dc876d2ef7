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
//! SimMIM with Swin (`SwinTransformerForSimMIM`):
//! ```text
//! patch embeddings + patch_embed.norm, hidden ones → mask_token (B, L, C)
//! stages, final norm                                            (B, H/s, W/s, C_last)
//! decoder.0: 1×1 convolution to s²·3 channels, pixel shuffle    (B, 3, H, W)
//! ```
//! (`s = encoder_stride`, 32 for Swin-T/B). Each last-stage token covers
//! `r × r` patches (`r = s / patch`), so the head's `r²·out` channels are
//! the predictions of those patches; they are reordered to `(B, L, out)`
//! like the ViT's. MAE with Swin is refused by [`ModelConfig::validate`].
//!
//! `out` is `p·p·C` for pixel targets and the codebook size for discrete ones.
//! SimMIM's tensors carry its names: the encoder's under `encoder.`, the head
//! `decoder.0.weight (out, D, 1, 1)` and `decoder.0.bias`, so official SimMIM
//! checkpoints load and Tessera's load in its code. The convolution's
//! channels are in pixel-shuffle order (channel-major); predictions are
//! reordered to MAE's patchify order `(i, j, c)` for the loss and pictures.

use crate::config::Pool;
use crate::config::{EncoderConfig, InitScheme, Method, ModelConfig, PixelLoss, TargetConfig};
use crate::error::{MimError, Result};
use crate::model::encoder::Encoder;
use crate::model::layers::{Block, LayerNorm, Linear, Module, join, visit_blocks};
use crate::model::masking::Mask;
use crate::model::pos_embed::sincos_2d;
use crate::model::target::{Codebook, normalize_patches, patchify_images};
use crate::rng::MimRng;
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
    /// (`encoder.mask_token`; `D` the patch embeddings' width).
    pub mask_token: Tensor,
    /// `decoder.0.weight (r²·out, D_out, 1, 1)`: output channels in
    /// pixel-shuffle order for pixel targets.
    pub weight: Tensor,
    /// `decoder.0.bias (r²·out)`.
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
    pub encoder: Encoder,
    pub head: Head,
    /// The visual vocabulary of a discrete target; fitted before training.
    pub codebook: Option<Codebook>,
}

impl MimModel {
    /// A freshly initialised model (MAE's initialisation).
    pub fn new<R: Rng + ?Sized>(config: ModelConfig, rng: &mut R) -> Result<MimModel> {
        config.validate()?;
        let enc = &config.encoder;
        let (d, l, out) = (enc.out_dim(), enc.num_patches(), config.output_dim());
        let encoder = Encoder::new(enc, rng)?;
        let head = match &config.method {
            Method::Mae { decoder } => {
                let dd = decoder.embed_dim;
                Head::Mae(MaeDecoder {
                    embed: Linear::new(d, dd, true, rng),
                    mask_token: Tensor::param(normal(dd, 0.0, 0.02, rng), &[1, 1, dd])?,
                    pos_embed: Tensor::var(sincos_2d(dd, enc.grid(), true), &[1, 1 + l, dd])?,
                    blocks: (0..decoder.depth)
                        .map(|_| Block::new(dd, decoder.num_heads, decoder.mlp_hidden(), enc.norm_eps(), rng))
                        .collect(),
                    norm: LayerNorm::new(dd, enc.norm_eps()),
                    pred: Linear::new(dd, out, true, rng),
                })
            }
            Method::SimMim => {
                // The token is as wide as the patch embeddings; the head maps
                // each output token to the r² patches it covers.
                let (e, ch) = (enc.embed_dim(), config.head_channels());
                let init = match enc {
                    EncoderConfig::Vit(v) => v.init,
                    EncoderConfig::Swin(_) => InitScheme::Beit,
                };
                let (token, weight, bias) = match (init, enc) {
                    // MAE's style: the token normal (std 0.02), the head a
                    // linear layer's Xavier weights and zero bias.
                    (InitScheme::Mae, _) => {
                        let token = normal(e, 0.0, 0.02, rng);
                        let pred = Linear::new(d, ch, true, rng);
                        (token, pred.weight.to_vec(), vec![0.0; ch])
                    }
                    // SimMIM's: the head's convolution PyTorch's default,
                    // uniform in ±1/√D; the ViT's token truncated at ±std,
                    // Swin's at ±2 (timm's default, which truncates nothing).
                    (InitScheme::Beit, _) => {
                        let bound = 1.0 / (d as f32).sqrt();
                        let cut = if enc.swin().is_some() { 2.0 } else { 0.02 };
                        (
                            trunc_normal(e, 0.0, 0.02, -cut, cut, rng),
                            uniform(ch * d, -bound, bound, rng),
                            uniform(ch, -bound, bound, rng),
                        )
                    }
                };
                Head::SimMim(SimMimHead {
                    mask_token: Tensor::param(token, &[1, 1, e])?,
                    weight: Tensor::param(weight, &[ch, d, 1, 1])?, // the convolution's (out, D, 1, 1)
                    bias: Tensor::param(bias, &[ch])?,
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
        let [h, w] = e.img_size();
        PatchDims::new(batch, e.in_chans(), h, w, e.patch_size())
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
                let vit = self
                    .encoder
                    .vit()
                    .ok_or_else(|| MimError::Input("MAE's decoder needs a Vision Transformer encoder".into()))?;
                let latent = vit.forward_visible(imgs, mask, train, rng)?; // (B, 1+K, D)
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
                let w = mask.weights().reshape(&[mask.batch as isize, l as isize, 1])?; // 1 = hidden
                let keep = w.neg().add_scalar(1.0);
                let tokens = match &self.encoder {
                    Encoder::Vit(vit) => {
                        let x = vit.embed_patches(imgs)?; // (B, L, D), positions added
                        // Positions are added to the mask token too (SimMIM adds them after masking).
                        let token = match vit.patch_positions()? {
                            Some(pos) => head.mask_token.add(&pos)?,
                            None => head.mask_token.clone(),
                        };
                        let masked = x.mul(&keep)?.add(&token.mul(&w)?)?;
                        let all =
                            vit.transform(&vit.prepend_cls(&masked)?, crate::model::vit::Tokens::All, train, rng)?;
                        all.narrow(1, 1, l)? // (B, L, D)
                    }
                    Encoder::Swin(swin) => {
                        let x = swin.embed(imgs)?; // (B, L, C), normalised
                        let masked = x.mul(&keep)?.add(&head.mask_token.mul(&w)?)?;
                        swin.stages(&masked, train, rng)? // (B, H/s, W/s, C_last)
                    }
                };
                let ch = head.weight.shape()[0];
                let w = head.weight.reshape(&[ch as isize, -1])?; // (r²·out, D)
                let pred = tokens.linear(&w, Some(&head.bias))?; // (B, …, r²·out)
                self.head_to_patches(&pred)
            }
        }
    }

    /// SimMIM's head output, one `r²·out` vector per encoder output token
    /// `(B, …, r²·out)`, as `(B, L, out)` in patch order. For pixels the
    /// channels are in pixel-shuffle order: channel `c·S² + y·S + x` is
    /// pixel `(y, x)` of channel `c` in the token's `S × S` square
    /// (`S = r·p`); that pixel belongs to patch `(y / p, x / p)` of the
    /// square, at `(y mod p, x mod p, c)` in MAE's patchify order. For a
    /// codebook, channel `k·r² + i·r + j` is entry `k` of patch `(i, j)`.
    fn head_to_patches(&self, pred: &Tensor) -> Result<Tensor> {
        let e = &self.config.encoder;
        let (b, l, r) = (
            pred.shape()[0] as isize,
            e.num_patches() as isize,
            e.token_patches() as isize,
        );
        let [gh, gw] = e.grid();
        let (hs, ws) = (gh as isize / r, gw as isize / r);
        Ok(match self.config.target {
            TargetConfig::Pixels { .. } => {
                let (c, p) = (e.in_chans() as isize, e.patch_size() as isize);
                pred.reshape(&[b, hs, ws, c, r, p, r, p])? // (b, hs, ws, c, i, y, j, x)
                    .permute(&[0, 1, 4, 2, 6, 5, 7, 3])? // (b, hs, i, ws, j, y, x, c)
                    .reshape(&[b, l, p * p * c])?
            }
            TargetConfig::Codebook { size, .. } if r > 1 => {
                let k = size as isize;
                pred.reshape(&[b, hs, ws, k, r, r])? // (b, hs, ws, k, i, j)
                    .permute(&[0, 1, 4, 2, 5, 3])? // (b, hs, i, ws, j, k)
                    .reshape(&[b, l, k])?
            }
            TargetConfig::Codebook { .. } => pred.clone(),
        })
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
    /// no graph. Swin offers [`Pool::Mean`] only.
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
