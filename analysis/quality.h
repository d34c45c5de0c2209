// The verdicts of the trust checks (DESIGN.md §3): whether a chain's SAEs
// learnt features at all (seed stability, distance from initialisation) and
// whether the chain keeps up with an SAE trained from scratch (chain vs
// independent). Plain numbers in, sentences out: the coordinator serves them
// and the CLI prints them.
#ifndef SAETRACK_ANALYSIS_QUALITY_H_
#define SAETRACK_ANALYSIS_QUALITY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "analysis/speedup.h"

namespace saetrack::analysis {

// One reference checkpoint: the chain's SAE and the independent one trained
// from scratch beside it (same activations, another seed).
struct ReferencePoint {
  int64_t step = 0;
  int chain_index = 0;
  // The chain's SAE.
  double chain_loss = 0;  // held-out total loss
  double chain_l0 = 0;
  double chain_median_cos_init = 0;  // to its own initialisation
  bool chain_converged = false;
  // The independent SAE.
  double reference_loss = 0;
  double reference_l0 = 0;
  double reference_median_cos_init = 0;  // to its random initialisation
  // The two dictionaries matched by decoder cosine, and the chance level
  // (two random dictionaries matched alike).
  double match_median = 0;
  double match_above_0_9 = 0;
  double random_median = 0;
  // The speed-up of recurrent initialisation measured here (later reference
  // checkpoints only; the curves are not needed).
  std::optional<RecurrenceSpeedup> speedup;
};

struct QualityVerdict {
  std::string check;  // "seed stability", "distance from initialisation",
                      // "chain vs independent", "recurrence speed-up"
  int64_t step = 0;
  bool passed = false;
  std::string verdict;
};

struct QualityThresholds {
  // Seed stability passes at a median matched cosine of at least this.
  double min_seed_match = 0.7;
  // A from-scratch SAE has learnt when its decoders' median cosine to their
  // random initialisation is at most this.
  double max_cos_to_init = 0.5;
  // The chain keeps up when its held-out loss is within this fraction of the
  // independent SAE's.
  double loss_tolerance = 0.05;
  // The paper's claim: recurrent initialisation needs at least this many
  // times fewer tokens (with the from-scratch schedule).
  double min_speedup = 20;
};

// Seed stability at the chain's first checkpoint (both SAEs from scratch),
// distance from initialisation of every from-scratch SAE, chain vs
// independent and the recurrence speed-up (where measured) at every later
// reference checkpoint; in `points` order.
std::vector<QualityVerdict> QualityVerdicts(
    const std::vector<ReferencePoint>& points,
    const QualityThresholds& thresholds = {});

}  // namespace saetrack::analysis

#endif  // SAETRACK_ANALYSIS_QUALITY_H_
