/* Region decode of a JPEG with libjpeg(-turbo): only the rows and columns of a crop
 * (plus the iMCU columns around it) go through IDCT, upsampling and colour conversion,
 * and the entropy decoder stops after the crop's last row. Optional DCT scaling n/8.
 *
 * Called from FFCV's numba-compiled decode loop through ctypes (loaders/jpeg.py), so the
 * interface is plain C: no Python objects, no allocation beyond libjpeg's own.
 * The module init below only exists so setuptools can build and install the file as an
 * ordinary extension next to the Python sources.
 */
#include <Python.h>

#include <setjmp.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <jpeglib.h>

struct error_mgr {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
};

static void on_error(j_common_ptr cinfo) {
    struct error_mgr *err = (struct error_mgr *)cinfo->err;
    longjmp(err->jump, 1);
}

/* Warnings (corrupt data, a truncated file padded with grey) must not print from a decode
 * thread: they are counted instead (info[5]), for `fastvip verify --decode`. */
static void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) cinfo->err->num_warnings++;
}

/* Decode rows [top, top + h) and columns [left, left + w) of the JPEG in (src, src_len),
 * given in full-resolution pixels, at DCT scale num/8 (num in 1..8).
 *
 * Writes RGB rows of info[1] pixels each (info[0] rows) to dst, which holds dst_cap bytes.
 * The wanted columns start info[2] pixels into each row: libjpeg widens a horizontal crop
 * to whole iMCUs. info[3], info[4] = the scaled image's height and width.
 * The scaled crop is [top*num/8, ceil((top+h)*num/8)) x [left*num/8, ceil((left+w)*num/8)).
 * info[5] = libjpeg's warnings; a crop that reaches the last row also reads the file to its end
 * marker, so trailing damage is counted there. info holds 6 int64s.
 * Returns 0, or -1 when libjpeg reports an error, -2 when dst is too small, -3 on bad arguments.
 */
int fastvip_decode_region(const uint8_t *src, uint64_t src_len, uint8_t *dst, uint64_t dst_cap,
                          int64_t top, int64_t left, int64_t h, int64_t w, int64_t num,
                          int64_t *info) {
    struct jpeg_decompress_struct cinfo;
    struct error_mgr err;
    volatile int status = 0; /* volatile: set between setjmp and a possible longjmp */

    if (num < 1 || num > 8 || h < 1 || w < 1 || top < 0 || left < 0) return -3;

    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (unsigned char *)src, (unsigned long)src_len);
    jpeg_read_header(&cinfo, TRUE);
    cinfo.out_color_space = JCS_RGB;
    cinfo.scale_num = (unsigned int)num;
    cinfo.scale_denom = 8;
    /* the same IDCT as FFCV's tjDecompress2(TJFLAG_FASTDCT), fancy upsampling as TurboJPEG's default */
    cinfo.dct_method = JDCT_IFAST;
    jpeg_start_decompress(&cinfo);

    int64_t sh = cinfo.output_height, sw = cinfo.output_width;
    int64_t r0 = top * num / 8, c0 = left * num / 8;
    int64_t r1 = ((top + h) * num + 7) / 8, c1 = ((left + w) * num + 7) / 8;
    if (r1 > sh) r1 = sh;
    if (c1 > sw) c1 = sw;
    if (r0 >= r1 || c0 >= c1) {
        status = -3;
        goto done;
    }

    /* One column of margin each side: fancy upsampling replicates the edge column of a
     * cropped scanline, so without it the crop's first or last column can differ from a
     * whole-image decode when the crop starts or ends on an iMCU boundary. */
    int64_t m0 = c0 > 0 ? c0 - 1 : 0, m1 = c1 < sw ? c1 + 1 : sw;
    JDIMENSION xoff = (JDIMENSION)m0, width = (JDIMENSION)(m1 - m0);
    if (m0 > 0 || m1 < sw) jpeg_crop_scanline(&cinfo, &xoff, &width);
    int64_t rows = r1 - r0, stride = (int64_t)cinfo.output_width * 3;
    if ((uint64_t)(rows * stride) > dst_cap) {
        status = -2;
        goto done;
    }
    if (r0 > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)r0);
    for (int64_t r = 0; r < rows;) {
        JSAMPROW row = dst + r * stride;
        r += jpeg_read_scanlines(&cinfo, &row, 1);
    }
    info[0] = rows;
    info[1] = cinfo.output_width;
    info[2] = c0 - (int64_t)xoff;
    info[3] = sh;
    info[4] = sw;
    if (r1 == sh) jpeg_finish_decompress(&cinfo); /* nothing left to decode but the markers */
    info[5] = err.pub.num_warnings;

done:
    /* abort, not finish, otherwise: the rows below the crop are never entropy-decoded */
    jpeg_abort_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return status;
}


/* ---- resize ------------------------------------------------------------------------- */

#define WBITS 14 /* weights sum to 1 << WBITS */

/* Per output pixel o (n_in >= n_out): k taps starting at start[o], weights w[o * k + j] in
 * fixed point: OpenCV's INTER_AREA, the share of each source pixel in the area the output
 * pixel covers. wf: k doubles of scratch. */
static void taps(int64_t n_in, int64_t n_out, int32_t *start, int32_t *w, int64_t k, double *wf) {
    double scale = (double)n_in / (double)n_out;
    for (int64_t o = 0; o < n_out; o++) {
        double a = o * scale, b = (o + 1) * scale;
        int64_t s0 = (int64_t)a;
        for (int64_t j = 0; j < k; j++) wf[j] = 0.0;
        for (int64_t i = s0; i < n_in && i < b && i - s0 < k; i++) {
            double lo = a > i ? a : (double)i, hi = b < i + 1 ? b : (double)(i + 1);
            wf[i - s0] = (hi - lo) / scale;
        }
        if (s0 + k > n_in) { /* keep every tap inside the image: shift the window left */
            int64_t shift = s0 + k - n_in;
            for (int64_t j = k - 1; j >= 0; j--) wf[j] = j >= shift ? wf[j - shift] : 0.0;
            s0 -= shift;
        }
        int32_t sum = 0, big = 0;
        for (int64_t j = 0; j < k; j++) {
            w[o * k + j] = (int32_t)lround(wf[j] * (1 << WBITS));
            sum += w[o * k + j];
            if (w[o * k + j] > w[o * k + big]) big = (int32_t)j;
        }
        w[o * k + big] += (1 << WBITS) - sum; /* exact unit gain */
        start[o] = (int32_t)s0;
    }
}

/* One output row from one vertically filtered row: k taps per output pixel, mirrored on request. */
static inline __attribute__((always_inline)) void hpass(const uint16_t *restrict row, const int32_t *restrict xs,
                                                         const int32_t *restrict wx, uint8_t *restrict out,
                                                         int64_t dw, int64_t k, int64_t mirror) {
    int64_t step = mirror ? -3 : 3;
    uint8_t *restrict px = out + (mirror ? 3 * (dw - 1) : 0);
    for (int64_t x = 0; x < dw; x++, px += step) {
        const int32_t *restrict wt = wx + x * k;
        const uint16_t *restrict in = row + xs[x] * 3;
        int32_t r = 0, g = 0, b = 0;
        for (int64_t j = 0; j < k; j++) {
            r += wt[j] * in[3 * j];
            g += wt[j] * in[3 * j + 1];
            b += wt[j] * in[3 * j + 2];
        }
        px[0] = (uint8_t)((r + (1 << 21)) >> 22);
        px[1] = (uint8_t)((g + (1 << 21)) >> 22);
        px[2] = (uint8_t)((b + (1 << 21)) >> 22);
    }
}

static int64_t ntaps(int64_t n_in, int64_t n_out) {
    return (n_in + n_out - 1) / n_out + 1;
}

/* Shrink the (sh, sw) RGB image at src (rows src_stride bytes apart) to (dh, dw) <= (sh, sw)
 * at dst (rows dst_stride bytes apart) with cv2.INTER_AREA's weights, mirrored left-right when
 * mirror != 0. Separable, vertical pass first (vectorised over whole rows) in 32-bit fixed
 * point: within one level of cv2.resize(INTER_AREA). Returns 0, -2 when out of memory,
 * -3 when an output side is empty or larger than the source's. */
/* AVX2 clone picked at load time where the CPU has it (2x faster here: 32-bit multiplies) */
__attribute__((target_clones("avx2", "default")))
int fastvip_resize(const uint8_t *src, int64_t src_stride, int64_t sh, int64_t sw, uint8_t *dst,
                   int64_t dst_stride, int64_t dh, int64_t dw, int64_t mirror) {
    if (dh < 1 || dw < 1 || sh < dh || sw < dw) return -3; /* growing: OpenCV's linear path is fast */
    int64_t ky = ntaps(sh, dh), kx = ntaps(sw, dw);
    if (ky > sh) ky = sh; /* a one-pixel source: one tap */
    if (kx > sw) kx = sw;
    int64_t kmax = ky > kx ? ky : kx;
    size_t n = (size_t)kmax * sizeof(double) + (size_t)(dh + dw) * sizeof(int32_t)
               + (size_t)(dh * ky + dw * kx) * sizeof(int32_t)
               + (size_t)sw * 3 * (sizeof(int32_t) + sizeof(uint16_t));
    char *mem = malloc(n);
    if (!mem) return -2;
    double *wf = (double *)mem;
    int32_t *ys = (int32_t *)(wf + kmax), *xs = ys + dh, *wy = xs + dw, *wx = wy + dh * ky;
    /* restrict: uint8_t pointers may alias anything, which would stop vectorisation */
    int32_t *restrict acc = wx + dw * kx;
    uint16_t *restrict row = (uint16_t *)(acc + sw * 3);
    taps(sh, dh, ys, wy, ky, wf);
    taps(sw, dw, xs, wx, kx, wf);
    int64_t width = sw * 3;
    for (int64_t y = 0; y < dh; y++) {
        for (int64_t i = 0; i < width; i++) acc[i] = 0;
        for (int64_t j = 0; j < ky; j++) {
            int32_t wt = wy[y * ky + j];
            if (!wt) continue;
            const uint8_t *restrict in = src + (ys[y] + j) * src_stride;
            for (int64_t i = 0; i < width; i++) acc[i] += wt * in[i];
        }
        for (int64_t i = 0; i < width; i++) row[i] = (uint16_t)((acc[i] + 32) >> 6);
        uint8_t *out = dst + y * dst_stride;
        /* a constant tap count lets the compiler unroll the gather (the common ratios < 3) */
        switch (kx) {
        case 2: hpass(row, xs, wx, out, dw, 2, mirror); break;
        case 3: hpass(row, xs, wx, out, dw, 3, mirror); break;
        case 4: hpass(row, xs, wx, out, dw, 4, mirror); break;
        default: hpass(row, xs, wx, out, dw, kx, mirror);
        }
    }
    free(mem);
    return 0;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_jpeg", .m_size = -1};

PyMODINIT_FUNC PyInit__jpeg(void) { return PyModule_Create(&module); }
