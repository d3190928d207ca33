// quant/quant.hpp: the umbrella header: everything but quant/io/ (serialization, fmt support).
//
//   #include <quant/quant.hpp>
//   auto t = quant::quantize<quant::int4, quant::per_group<128>>({w.data(), rows, cols});
//   quant::gemv(t, x, y);
#pragma once

#include "config.hpp"
#include "version.hpp"

#include "core/error.hpp"
#include "core/matrix_view.hpp"
#include "core/scalar_types.hpp"

#include "formats/format_traits.hpp"
#include "formats/integer.hpp"
#include "formats/lut.hpp"
#include "formats/minifloat.hpp"

#include "layout/packing.hpp"
#include "scheme/fit.hpp"
#include "scheme/granularity.hpp"

#include "tensor/storage.hpp"
#include "tensor/tensor.hpp"
#include "tensor/tensor_view.hpp"

#include "kernels/api.hpp"
