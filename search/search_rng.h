/* search_rng: the random numbers of search (random and TPE proposals).
 *
 * A stream is splitmix64 over a 64-bit state seeded from (seed, stream):
 * trial i of a sweep draws from stream i of the sweep's search seed, so its
 * configuration depends on nothing else (a random sweep is reproducible
 * trial by trial, whatever order the trials are made in).  unit() has 53
 * random bits; normal() is Box-Muller, one value a call. */
#ifndef CDS_SEARCH_RNG_H
#define CDS_SEARCH_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct search_rng {
    uint64_t s;
} search_rng;

static inline uint64_t search_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void search_rng_seed(search_rng *r, uint64_t seed, uint64_t stream)
{
    r->s = search_mix64(seed ^ search_mix64(stream + 0x9e3779b97f4a7c15ull));
}

static inline uint64_t search_rng_u64(search_rng *r)
{
    r->s += 0x9e3779b97f4a7c15ull;
    return search_mix64(r->s);
}

/* [0, 1) */
static inline double search_rng_unit(search_rng *r)
{
    return (double)(search_rng_u64(r) >> 11) * 0x1.0p-53;
}

/* [0, n) for n >= 1 (n small: the modulo bias is below 2^-50) */
static inline uint64_t search_rng_below(search_rng *r, uint64_t n)
{
    return search_rng_u64(r) % n;
}

/* a standard normal */
static inline double search_rng_normal(search_rng *r)
{
    double u = search_rng_unit(r), v = search_rng_unit(r);
    return sqrt(-2.0 * log1p(-u)) * cos(6.283185307179586 * v);
}

#endif
