/* nn_rng: the engine's random numbers, reproducible from a seed alone.
 *
 * xoshiro256** (Blackman and Vigna) seeded through splitmix64, as its authors
 * recommend: 256 bits of state that a checkpoint stores verbatim, so a
 * resumed run continues the very same stream.  nn_rng_mix hashes a few words
 * into one seed (for "the shuffle of epoch e of shard k"), so streams that
 * must be independent of what ran before are derived, not drawn. */
#ifndef CDS_NN_RNG_H
#define CDS_NN_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct nn_rng {
    uint64_t s[4];
} nn_rng;

static inline uint64_t nn_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline void nn_rng_seed(nn_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = nn_splitmix64(&seed);
}

static inline uint64_t nn_rng_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static inline uint64_t nn_rng_next(nn_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = nn_rng_rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = nn_rng_rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static inline double nn_rng_unit(nn_rng *r)
{
    return (double)(nn_rng_next(r) >> 11) * 0x1.0p-53;
}

/* Standard normal by Box-Muller (one value per call; the pair's second half
 * is dropped so the stream position does not depend on call parity). */
static inline double nn_rng_normal(nn_rng *r)
{
    double u1 = nn_rng_unit(r), u2 = nn_rng_unit(r);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

/* One seed from (a, b, c): independent streams for independent purposes. */
static inline uint64_t nn_rng_mix(uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t x = a;
    uint64_t h = nn_splitmix64(&x);
    x = h ^ b;
    h = nn_splitmix64(&x);
    x = h ^ c;
    return nn_splitmix64(&x);
}

#endif
