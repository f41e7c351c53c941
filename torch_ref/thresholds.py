"""USB's confidence thresholds, transcribed for one process (one GPU).

From microsoft/Semi-supervised-learning, `semilearn/algorithms/`:
`hooks/masking.py` (`FixedThresholdingHook`), `flexmatch/utils.py`
(`FlexMatchThresholdingHook`), `freematch/utils.py`
(`FreeMatchThresholingHook`) and `freematch/freematch.py` (`entropy_loss`),
`hooks/dist_align.py` (`DistAlignEMAHook`) and `softmatch/utils.py`
(`SoftMatchWeightingHook`). The hooks below keep USB's statements and their
order of float32 operations; `algorithm.p_cutoff`, `algorithm.use_quantile`
and `algorithm.clip_thresh` become constructor arguments, and the
distributed gathers are gone (world size 1).

The jaxmask-named functions (`fixmatch`, `flexmatch`, `freematch`,
`softmatch`, `percentile_threshold`, `freematch_fairness_loss`) compose the
hooks as the algorithms' `train_step`s do and return stateful objects:
`t.update(probs, indices=None) -> (mask, pseudo_labels)`, `t.state()` the
state as a NamedTuple with jaxmask's field names. Where USB's own code gives
NaN or ignores an option, the composition says so (`softmatch`).
"""

from collections import Counter
from copy import deepcopy
import math
from typing import NamedTuple

import numpy as np
import torch


class FlexMatchState(NamedTuple):
  selected_label: torch.Tensor
  classwise_acc: torch.Tensor


class FreeMatchState(NamedTuple):
  time_p: torch.Tensor
  p_model: torch.Tensor
  label_hist: torch.Tensor


class SoftMatchState(NamedTuple):
  count: int
  p_model: torch.Tensor
  mu: torch.Tensor
  var: torch.Tensor


# ---------------------------------------------------------------------------
# USB's hooks.
# ---------------------------------------------------------------------------


class FixedThresholdingHook:
  """`hooks/masking.py`: FixMatch's fixed threshold."""

  def __init__(self, p_cutoff=0.95):
    self.p_cutoff = p_cutoff

  @torch.no_grad()
  def masking(self, probs_x_ulb):
    max_probs, _ = torch.max(probs_x_ulb.detach(), dim=-1)
    return max_probs.ge(self.p_cutoff).to(max_probs.dtype)


class FlexMatchThresholdingHook:
  """`flexmatch/utils.py`; `mapping` picks one of USB's (commented) mappings."""

  def __init__(self, ulb_dest_len, num_classes, p_cutoff=0.95,
               thresh_warmup=True, mapping="convex"):
    self.ulb_dest_len = ulb_dest_len
    self.num_classes = num_classes
    self.p_cutoff = p_cutoff
    self.thresh_warmup = thresh_warmup
    self.mapping = mapping
    self.selected_label = torch.ones((ulb_dest_len,), dtype=torch.long) * -1
    self.classwise_acc = torch.zeros((num_classes,))

  @torch.no_grad()
  def update(self):
    pseudo_counter = Counter(self.selected_label.tolist())
    if max(pseudo_counter.values()) < self.ulb_dest_len:  # not all one bucket
      if self.thresh_warmup:
        for i in range(self.num_classes):
          self.classwise_acc[i] = pseudo_counter[i] / max(pseudo_counter.values())
      else:
        wo_negative_one = deepcopy(pseudo_counter)
        if -1 in wo_negative_one.keys():
          wo_negative_one.pop(-1)
        for i in range(self.num_classes):
          self.classwise_acc[i] = pseudo_counter[i] / max(wo_negative_one.values())

  def _threshold(self, acc):
    if self.mapping == "convex":
      return self.p_cutoff * (acc / (2. - acc))
    if self.mapping == "linear":
      return self.p_cutoff * (acc + 1.) / 2
    return self.p_cutoff * (torch.log(acc + 1.) + 0.5) / (math.log(2) + 0.5)

  @torch.no_grad()
  def masking(self, probs_x_ulb, idx_ulb):
    probs_x_ulb = probs_x_ulb.detach()
    max_probs, max_idx = torch.max(probs_x_ulb, dim=-1)
    mask = max_probs.ge(self._threshold(self.classwise_acc[max_idx]))
    select = max_probs.ge(self.p_cutoff)
    mask = mask.to(max_probs.dtype)
    if idx_ulb[select == 1].nelement() != 0:
      self.selected_label[idx_ulb[select == 1]] = max_idx[select == 1]
    self.update()
    return mask


class FreeMatchThresholdingHook:
  """`freematch/utils.py` (USB spells it `FreeMatchThresholingHook`)."""

  def __init__(self, num_classes, momentum=0.999, use_quantile=False,
               clip_thresh=False):
    self.num_classes = num_classes
    self.m = momentum
    self.use_quantile = use_quantile
    self.clip_thresh = clip_thresh
    self.p_model = torch.ones((num_classes)) / num_classes
    self.label_hist = torch.ones((num_classes)) / num_classes
    self.time_p = self.p_model.mean()

  @torch.no_grad()
  def update(self, probs_x_ulb):
    max_probs, max_idx = torch.max(probs_x_ulb, dim=-1, keepdim=True)
    if self.use_quantile:
      self.time_p = self.time_p * self.m + (1 - self.m) * torch.quantile(max_probs, 0.8)
    else:
      self.time_p = self.time_p * self.m + (1 - self.m) * max_probs.mean()
    if self.clip_thresh:
      self.time_p = torch.clip(self.time_p, 0.0, 0.95)
    self.p_model = self.p_model * self.m + (1 - self.m) * probs_x_ulb.mean(dim=0)
    hist = torch.bincount(max_idx.reshape(-1), minlength=self.p_model.shape[0]).to(
        self.p_model.dtype)
    self.label_hist = self.label_hist * self.m + (1 - self.m) * (hist / hist.sum())

  @torch.no_grad()
  def masking(self, probs_x_ulb):
    probs_x_ulb = probs_x_ulb.detach()
    self.update(probs_x_ulb)
    max_probs, max_idx = probs_x_ulb.max(dim=-1)
    mod = self.p_model / torch.max(self.p_model, dim=-1)[0]
    return max_probs.ge(self.time_p * mod[max_idx]).to(max_probs.dtype)


def _replace_inf_to_zero(val):
  val[val == float("inf")] = 0.0
  return val


def entropy_loss(mask, logits_s, prob_model, label_hist):
  """`freematch/freematch.py`: FreeMatch's fairness term and `hist_s.mean()`."""
  mask = mask.bool()
  logits_s = logits_s[mask]
  prob_s = logits_s.softmax(dim=-1)
  _, pred_label_s = torch.max(prob_s, dim=-1)
  hist_s = torch.bincount(pred_label_s, minlength=logits_s.shape[1]).to(logits_s.dtype)
  hist_s = hist_s / hist_s.sum()
  prob_model = prob_model.reshape(1, -1)
  label_hist = label_hist.reshape(1, -1)
  prob_model_scaler = _replace_inf_to_zero(1 / label_hist).detach()
  mod_prob_model = prob_model * prob_model_scaler
  mod_prob_model = mod_prob_model / mod_prob_model.sum(dim=-1, keepdim=True)
  mean_prob_scaler_s = _replace_inf_to_zero(1 / hist_s).detach()
  mod_mean_prob_s = prob_s.mean(dim=0, keepdim=True) * mean_prob_scaler_s
  mod_mean_prob_s = mod_mean_prob_s / mod_mean_prob_s.sum(dim=-1, keepdim=True)
  loss = mod_prob_model * torch.log(mod_mean_prob_s + 1e-12)
  loss = loss.sum(dim=1)
  return loss.mean(), hist_s.mean()


class DistAlignEMAHook:
  """`hooks/dist_align.py`, with SoftMatch's uniform target (`dist_uniform`)."""

  def __init__(self, num_classes, momentum=0.999):
    self.num_classes = num_classes
    self.m = momentum
    self.p_target = torch.ones((num_classes,)) / num_classes
    self.p_model = None

  @torch.no_grad()
  def dist_align(self, probs_x_ulb):
    self.update_p(probs_x_ulb)
    probs_x_ulb_aligned = probs_x_ulb * (self.p_target + 1e-6) / (self.p_model + 1e-6)
    probs_x_ulb_aligned = probs_x_ulb_aligned / probs_x_ulb_aligned.sum(dim=-1, keepdim=True)
    return probs_x_ulb_aligned

  @torch.no_grad()
  def update_p(self, probs_x_ulb):
    probs_x_ulb = probs_x_ulb.detach()
    if self.p_model is None:
      self.p_model = torch.mean(probs_x_ulb, dim=0)
    else:
      self.p_model = self.p_model * self.m + torch.mean(probs_x_ulb, dim=0) * (1 - self.m)


class SoftMatchWeightingHook:
  """`softmatch/utils.py` (`per_class=False`).

  `keep_var_for_one_sample=False` is USB: the unbiased variance of one value
  is NaN and enters the state. True leaves the variance unchanged then, as
  jaxmask documents.
  """

  def __init__(self, num_classes, n_sigma=2, momentum=0.999,
               keep_var_for_one_sample=False):
    self.num_classes = num_classes
    self.n_sigma = n_sigma
    self.m = momentum
    self.keep_var_for_one_sample = keep_var_for_one_sample
    self.prob_max_mu_t = torch.tensor(1.0 / num_classes)
    self.prob_max_var_t = torch.tensor(1.0)

  @torch.no_grad()
  def update(self, probs_x_ulb):
    max_probs, max_idx = probs_x_ulb.max(dim=-1)
    prob_max_mu_t = torch.mean(max_probs)
    self.prob_max_mu_t = self.m * self.prob_max_mu_t + (1 - self.m) * prob_max_mu_t.item()
    if not (self.keep_var_for_one_sample and max_probs.numel() == 1):
      prob_max_var_t = torch.var(max_probs, unbiased=True)
      self.prob_max_var_t = self.m * self.prob_max_var_t + (1 - self.m) * prob_max_var_t.item()
    return max_probs, max_idx

  @torch.no_grad()
  def masking(self, probs_x_ulb):
    probs_x_ulb = probs_x_ulb.detach()
    self.update(probs_x_ulb)
    max_probs, max_idx = probs_x_ulb.max(dim=-1)
    mu = self.prob_max_mu_t
    var = self.prob_max_var_t
    return torch.exp(-((torch.clamp(max_probs - mu, max=0.0) ** 2)
                       / (2 * var / (self.n_sigma ** 2))))


# ---------------------------------------------------------------------------
# The algorithms' train_step composition, under jaxmask's names.
# ---------------------------------------------------------------------------


def _pseudo_labels(probs):
  """PseudoLabelingHook.gen_ulb_targets(use_hard_label=True): the argmax."""
  return torch.argmax(probs.detach(), dim=-1)


class _FixMatch:

  def __init__(self, p_cutoff):
    self.hook = FixedThresholdingHook(p_cutoff)

  def update(self, probs, indices=None):
    del indices
    return self.hook.masking(probs), _pseudo_labels(probs)

  def state(self):
    return ()


class _FlexMatch:

  def __init__(self, **kwargs):
    self.hook = FlexMatchThresholdingHook(**kwargs)

  def update(self, probs, indices):
    return self.hook.masking(probs, indices), _pseudo_labels(probs)

  def state(self):
    return FlexMatchState(self.hook.selected_label.clone(),
                          self.hook.classwise_acc.clone())


class _FreeMatch:

  def __init__(self, **kwargs):
    self.hook = FreeMatchThresholdingHook(**kwargs)

  def update(self, probs, indices=None):
    del indices
    return self.hook.masking(probs), _pseudo_labels(probs)

  def state(self):
    return FreeMatchState(self.hook.time_p.clone(), self.hook.p_model.clone(),
                          self.hook.label_hist.clone())


class _SoftMatch:

  def __init__(self, num_classes, momentum, n_sigma, dist_align,
               keep_var_for_one_sample):
    self.num_classes = num_classes
    self.align = DistAlignEMAHook(num_classes, momentum) if dist_align else None
    self.hook = SoftMatchWeightingHook(
        num_classes, n_sigma=n_sigma, momentum=momentum,
        keep_var_for_one_sample=keep_var_for_one_sample)
    self.count = 0

  def update(self, probs, indices=None):
    del indices
    aligned = probs if self.align is None else self.align.dist_align(probs)
    mask = self.hook.masking(aligned)
    self.count += 1
    return mask, _pseudo_labels(probs)  # from the unaligned probabilities

  def state(self):
    if self.align is None or self.align.p_model is None:
      p_model = torch.ones((self.num_classes,)) / self.num_classes
    else:
      p_model = self.align.p_model.clone()
    return SoftMatchState(self.count, p_model, self.hook.prob_max_mu_t.clone(),
                          self.hook.prob_max_var_t.clone())


def fixmatch(p_cutoff=0.95):
  """FixMatch: `FixedThresholdingHook` and hard pseudo-labels."""
  return _FixMatch(p_cutoff)


def flexmatch(num_classes, num_unlabelled, p_cutoff=0.95, warmup=True,
              mapping="convex"):
  """FlexMatch: `FlexMatchThresholdingHook` and hard pseudo-labels."""
  return _FlexMatch(ulb_dest_len=num_unlabelled, num_classes=num_classes,
                    p_cutoff=p_cutoff, thresh_warmup=warmup, mapping=mapping)


def freematch(num_classes, momentum=0.999, use_quantile=False,
              clip_thresh=False):
  """FreeMatch: `FreeMatchThresholingHook` and hard pseudo-labels."""
  return _FreeMatch(num_classes=num_classes, momentum=momentum,
                    use_quantile=use_quantile, clip_thresh=clip_thresh)


def softmatch(num_classes, momentum=0.999, n_sigma=2.0, dist_align=True,
              keep_var_for_one_sample=True):
  """SoftMatch: `DistAlignEMAHook` (uniform), then `SoftMatchWeightingHook`.

  Pseudo-labels come from the unaligned probabilities, as in USB's
  `train_step`. Two differences from USB, both where USB is unusable:
  USB never reads its `dist_align` flag (it always aligns), here False skips
  the alignment; and a batch of one sample leaves the variance unchanged
  (`keep_var_for_one_sample=False` is USB's NaN).
  """
  return _SoftMatch(num_classes, momentum, n_sigma, dist_align,
                    keep_var_for_one_sample)


def percentile_threshold(q, keep):
  """MLKD's batch-percentile mask of the confidences, stateless."""

  class _Percentile:

    def update(self, probs, indices=None):
      del indices
      confidence, pseudo_labels = probs.detach().max(dim=1)
      threshold = np.percentile(confidence.cpu().numpy(), q)
      mask = confidence.le(threshold) if keep == "low" else confidence.ge(threshold)
      return mask.to(confidence.dtype), pseudo_labels

    def state(self):
      return ()

  return _Percentile()


def freematch_fairness_loss(strong_logits, mask, state):
  """FreeMatch's `ent_loss`: `entropy_loss(...)[0]` if any sample is masked, else 0."""
  if mask.sum() > 0:
    return entropy_loss(mask, strong_logits, state.p_model, state.label_hist)[0]
  return torch.zeros(())
