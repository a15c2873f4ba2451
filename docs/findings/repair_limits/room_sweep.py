"""Other settings of the room's methods on the whole zoo (docs/interventions.md, "Where the room's repairs stop").

  python room_sweep.py cut SEED     VCD, the image-free contrast and PAI with a looser plausibility cut
  python room_sweep.py fusion SEED  PAI, the early readout and M3ID at the other settings tried for visual neglect
  python room_sweep.py pai1 SEED    the whole matrix, the attribute prior's doses too, with PAI at alpha 1, gamma 1.1

Prints one JSON line: matrix (fraction fixed), effect (beyond the best control), n_errors.
"""
import json
import sys

import torch

from lvlm_probe.interventions import PAI, VCD, EarlyReadout, ImageFreeContrast
from lvlm_probe.organisms.mitigation import CAUSES, cause_intervention_matrix, default_interventions

COLUMNS = {
    "cut": {"vcd_b01": VCD(alpha=3.0, beta=0.01), "if_b01": ImageFreeContrast(beta=0.01),
            "if_b001": ImageFreeContrast(beta=0.001), "pai_b01": PAI(alpha=2.0, gamma=2.0, first_layer=1, beta=0.01)},
    "fusion": {"pai_a02": PAI(alpha=0.2, gamma=1.1, first_layer=1), "pai_a05": PAI(alpha=0.5, gamma=1.1, first_layer=1),
               "pai_a1": PAI(alpha=1.0, gamma=1.1, first_layer=1), "pai_a05g2": PAI(alpha=0.5, gamma=2.0, first_layer=1),
               "pai_a2g11": PAI(alpha=2.0, gamma=1.1, first_layer=1), "er_l1": EarlyReadout(layers=(1,)),
               "er_l12": EarlyReadout(layers=(1, 2)), "er_a1": EarlyReadout(alpha=1.0),
               "m3id": ImageFreeContrast(alpha=0.0), "if_a05": ImageFreeContrast(alpha=0.5)},
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "pai1":
        room = {**default_interventions(), "pai": PAI(alpha=1.0, gamma=1.1, first_layer=1)}
        causes = (*CAUSES, "attribute_prior@0.5", "attribute_prior@0.75")
        r = cause_intervention_matrix(causes, n=96, seed=int(sys.argv[2]), interventions=room)
    else:
        r = cause_intervention_matrix(CAUSES, n=96, seed=int(sys.argv[2]), interventions=COLUMNS[sys.argv[1]])
    print(json.dumps({"matrix": r["matrix"], "effect": r["effect"], "n_errors": r["controls"]["n_errors"]},
                     default=float))
