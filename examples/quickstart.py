"""The README's quick start: confidence masks under jit and vmap, and MLKD's loss."""

import jax
import numpy as np

import jaxmask

np.set_printoptions(precision=4)
key_t, key_s = jax.random.split(jax.random.key(0))
teacher = jax.random.normal(key_t, (8, 5)) * 2  # [batch, num_classes] logits
student = jax.random.normal(key_s, (8, 5))

out = jax.jit(jaxmask.confidence_masks)(teacher)  # MLKD's masks, q = 50
print("confidence   ", np.asarray(out.confidence))
print("threshold    ", np.asarray(out.threshold), "(NumPy-exact median)")
print("mask (<=)    ", out.mask)
print("class mask   ", out.class_mask)

confident = jaxmask.confidence_masks(teacher, q=70.0, keep="high")
print("top 30% mask ", confident.mask)

per_group = jax.vmap(jaxmask.confidence_masks)(teacher.reshape(2, 4, 5))
print("vmap masks   ", per_group.mask)

loss = jax.jit(jaxmask.mlkd_loss)(student, student, teacher, teacher)
print(f"MLKD loss     kd={loss.kd:.4f} cc={loss.cc:.4f} bc={loss.bc:.4f}")
