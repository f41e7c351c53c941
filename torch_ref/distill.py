"""MLKD's losses, transcribed from its released `KD_ours.py` (Jin et al., CVPR 2023).

`kd_loss`, `class_correlation_loss` and `batch_correlation_loss` are the
original `kd_loss`, `cc_loss` and `bc_loss`; `mlkd_loss` is `forward_train`
without the supervised cross-entropy term and with the loss weight 1.
"""

import torch
import torch.nn.functional as F

from torch_ref.confidence import confidence_masks


def kd_loss(logits_student, logits_teacher, temperature, reduce=True):
  log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
  pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
  if reduce:
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
  else:
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1)
  loss_kd *= temperature**2
  return loss_kd


def class_correlation_loss(logits_student, logits_teacher, temperature, reduce=True):
  batch_size, class_num = logits_teacher.shape
  pred_student = F.softmax(logits_student / temperature, dim=1)
  pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
  student_matrix = torch.mm(pred_student.transpose(1, 0), pred_student)
  teacher_matrix = torch.mm(pred_teacher.transpose(1, 0), pred_teacher)
  if reduce:
    consistency_loss = ((teacher_matrix - student_matrix) ** 2).sum() / class_num
  else:
    consistency_loss = ((teacher_matrix - student_matrix) ** 2) / class_num
  return consistency_loss


def batch_correlation_loss(logits_student, logits_teacher, temperature, reduce=True):
  batch_size, class_num = logits_teacher.shape
  pred_student = F.softmax(logits_student / temperature, dim=1)
  pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
  student_matrix = torch.mm(pred_student, pred_student.transpose(1, 0))
  teacher_matrix = torch.mm(pred_teacher, pred_teacher.transpose(1, 0))
  if reduce:
    consistency_loss = ((teacher_matrix - student_matrix) ** 2).sum() / batch_size
  else:
    consistency_loss = ((teacher_matrix - student_matrix) ** 2) / batch_size
  return consistency_loss


def mlkd_loss(logits_student_weak, logits_student_strong, logits_teacher_weak,
              logits_teacher_strong, temperature=4.0, mode="faithful"):
  """Returns `(loss_kd, loss_cc, loss_bc)` as `forward_train` builds them.

  `mode="faithful"` is the released code. `mode="masked"` is jaxmask's opt-in:
  the `reduce=False` terms are masked, then reduced as `reduce=True` reduces
  them (mean over samples for KD, sum for the matrices, which already carry
  their `/ C` or `/ batch`), and the strong views are used at every
  strong-view temperature.
  """
  logits_teacher_weak = logits_teacher_weak.detach()
  logits_teacher_strong = logits_teacher_strong.detach()
  masks = confidence_masks(logits_teacher_weak)
  mask, class_conf_mask = masks.mask, masks.class_mask
  temperatures = [temperature, 3.0, 5.0, 2.0, 6.0]

  loss_kd_weak = 0.0
  loss_cc_weak = 0.0
  loss_bc_weak = 0.0
  for t in temperatures:
    if mode == "faithful":
      loss_kd_weak = loss_kd_weak + (kd_loss(
          logits_student_weak, logits_teacher_weak, t) * mask).mean()
      loss_cc_weak = loss_cc_weak + (class_correlation_loss(
          logits_student_weak, logits_teacher_weak, t) * class_conf_mask).mean()
      loss_bc_weak = loss_bc_weak + (batch_correlation_loss(
          logits_student_weak, logits_teacher_weak, t) * mask).mean()
    else:
      loss_kd_weak = loss_kd_weak + (kd_loss(
          logits_student_weak, logits_teacher_weak, t, reduce=False) * mask).mean()
      loss_cc_weak = loss_cc_weak + (class_correlation_loss(
          logits_student_weak, logits_teacher_weak, t, reduce=False) * class_conf_mask).sum()
      loss_bc_weak = loss_bc_weak + (batch_correlation_loss(
          logits_student_weak, logits_teacher_weak, t, reduce=False) * mask).sum()

  loss_kd_strong = 0.0
  for i, t in enumerate(temperatures):
    if mode == "faithful" and i >= 3:
      # As released: the last two "strong" terms use the weak views.
      loss_kd_strong = loss_kd_strong + kd_loss(
          logits_student_weak, logits_teacher_weak, t)
    else:
      loss_kd_strong = loss_kd_strong + kd_loss(
          logits_student_strong, logits_teacher_strong, t)

  return loss_kd_weak + loss_kd_strong, loss_cc_weak, loss_bc_weak
