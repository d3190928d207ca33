// report/svg.hpp: quality against bits per weight as a self-contained SVG scatter plot, one
// colour per method, with the Pareto front (the points no other point beats on both axes) joined
// by a line. Written by the program itself: no plotting dependency.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace report {

struct plot_point {
  std::string series;  ///< the method: one colour each
  std::string label;   ///< the format, written next to the point
  double x = 0.0;      ///< bits per weight
  double y = 0.0;      ///< the quality measure, lower is better
};

/// Indices of the points on the Pareto front (lower x and lower y are better), by increasing x.
inline std::vector<std::size_t> pareto_front(const std::vector<plot_point>& p) {
  std::vector<std::size_t> idx(p.size());
  for (std::size_t i = 0; i < p.size(); ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return p[a].x != p[b].x ? p[a].x < p[b].x : p[a].y < p[b].y; });
  std::vector<std::size_t> front;
  double best = INFINITY;
  for (std::size_t i : idx)
    if (p[i].y < best) {
      front.push_back(i);
      best = p[i].y;
    }
  return front;
}

namespace detail {
inline std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else if (c == '&') o += "&amp;";
    else if (c == '"') o += "&quot;";
    else o += c;
  }
  return o;
}
inline std::string num(double v, int prec = 3) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*g", prec, v);
  return b;
}
}  // namespace detail

/// The plot as an SVG document. With log_y the y axis is logarithmic (all y must be > 0).
inline std::string scatter_svg(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                               const std::vector<plot_point>& pts, bool log_y) {
  const double W = 900, H = 560, L = 80, R = 190, T = 50, B = 60;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  auto ty = [&](double y) { return log_y ? std::log10(y) : y; };
  for (const auto& p : pts) {
    x0 = std::min(x0, p.x), x1 = std::max(x1, p.x);
    y0 = std::min(y0, ty(p.y)), y1 = std::max(y1, ty(p.y));
  }
  if (pts.empty()) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  const double xm = std::max(0.25, 0.06 * (x1 - x0)), ym = std::max(1e-9, 0.08 * (y1 - y0));
  x0 -= xm, x1 += xm, y0 -= ym, y1 += ym;
  if (y1 - y0 < 1e-12) y0 -= 1, y1 += 1;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return T + (1.0 - (ty(y) - y0) / (y1 - y0)) * (H - T - B); };
  static const char* colours[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"};
  std::map<std::string, std::string> colour;
  for (const auto& p : pts)
    if (!colour.count(p.series)) colour[p.series] = colours[colour.size() % 7];

  std::string s;
  s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + detail::num(W, 6) + "\" height=\"" + detail::num(H, 6) +
       "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"" + detail::num(W / 2, 6) + "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">" +
       detail::escape(title) + "</text>\n";
  // axes and ticks
  s += "<rect x=\"" + detail::num(L, 6) + "\" y=\"" + detail::num(T, 6) + "\" width=\"" + detail::num(W - L - R, 6) +
       "\" height=\"" + detail::num(H - T - B, 6) + "\" fill=\"none\" stroke=\"#444\"/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double xv = x0 + (x1 - x0) * i / 5.0, X = px(xv);
    s += "<line x1=\"" + detail::num(X, 6) + "\" y1=\"" + detail::num(H - B, 6) + "\" x2=\"" + detail::num(X, 6) +
         "\" y2=\"" + detail::num(T, 6) + "\" stroke=\"#eee\"/>\n";
    s += "<text x=\"" + detail::num(X, 6) + "\" y=\"" + detail::num(H - B + 16, 6) + "\" text-anchor=\"middle\">" +
         detail::num(xv) + "</text>\n";
    const double yt = y0 + (y1 - y0) * i / 5.0, yv = log_y ? std::pow(10.0, yt) : yt, Y = py(yv);
    s += "<line x1=\"" + detail::num(L, 6) + "\" y1=\"" + detail::num(Y, 6) + "\" x2=\"" + detail::num(W - R, 6) +
         "\" y2=\"" + detail::num(Y, 6) + "\" stroke=\"#eee\"/>\n";
    s += "<text x=\"" + detail::num(L - 6, 6) + "\" y=\"" + detail::num(Y + 4, 6) + "\" text-anchor=\"end\">" +
         detail::num(yv) + "</text>\n";
  }
  s += "<text x=\"" + detail::num((L + W - R) / 2, 6) + "\" y=\"" + detail::num(H - 18, 6) + "\" text-anchor=\"middle\">" +
       detail::escape(xlabel) + "</text>\n";
  s += "<text transform=\"translate(18," + detail::num((T + H - B) / 2, 6) + ") rotate(-90)\" text-anchor=\"middle\">" +
       detail::escape(ylabel) + (log_y ? " (log scale)" : "") + "</text>\n";
  // the Pareto front
  const auto front = pareto_front(pts);
  if (front.size() > 1) {
    s += "<polyline fill=\"none\" stroke=\"#999\" stroke-dasharray=\"5,4\" points=\"";
    for (std::size_t i : front) s += detail::num(px(pts[i].x), 6) + "," + detail::num(py(pts[i].y), 6) + " ";
    s += "\"/>\n";
  }
  // Labels: the front's first, then the others where they do not collide with one already placed
  // (every point has its full description as a tooltip).
  std::vector<std::size_t> order(front);
  for (std::size_t i = 0; i < pts.size(); ++i)
    if (std::find(front.begin(), front.end(), i) == front.end()) order.push_back(i);
  std::vector<std::pair<double, double>> placed;
  std::vector<bool> labelled(pts.size(), false);
  for (std::size_t i : order) {
    const double lx = px(pts[i].x) + 7, ly = py(pts[i].y) - 5, w = 5.5 * static_cast<double>(pts[i].label.size());
    bool clash = false;
    for (const auto& [qx, qy] : placed) clash = clash || (std::fabs(ly - qy) < 11 && lx < qx + 70 && qx < lx + w);
    if (!clash) placed.emplace_back(lx, ly), labelled[i] = true;
  }
  for (std::size_t pi = 0; pi < pts.size(); ++pi) {
    const plot_point& p = pts[pi];
    const bool on_front = std::find(front.begin(), front.end(), pi) != front.end();
    s += "<circle cx=\"" + detail::num(px(p.x), 6) + "\" cy=\"" + detail::num(py(p.y), 6) + "\" r=\"" +
         (on_front ? "6" : "4") + "\" fill=\"" + colour[p.series] + "\"" + (on_front ? " stroke=\"black\"" : "") +
         "><title>" + detail::escape(p.series + ", " + p.label + ": " + detail::num(p.x, 4) + " bits/w, " +
                                     detail::num(p.y, 5)) +
         "</title></circle>\n";
    if (labelled[pi])
      s += "<text x=\"" + detail::num(px(p.x) + 7, 6) + "\" y=\"" + detail::num(py(p.y) - 5, 6) +
           "\" font-size=\"9\" fill=\"#555\">" + detail::escape(p.series + " " + p.label) + "</text>\n";
  }
  // legend
  double ly = T + 10;
  for (const auto& [name, c] : colour) {
    s += "<circle cx=\"" + detail::num(W - R + 20, 6) + "\" cy=\"" + detail::num(ly, 6) + "\" r=\"5\" fill=\"" + c + "\"/>";
    s += "<text x=\"" + detail::num(W - R + 32, 6) + "\" y=\"" + detail::num(ly + 4, 6) + "\">" + detail::escape(name) +
         "</text>\n";
    ly += 20;
  }
  s += "<text x=\"" + detail::num(W - R + 14, 6) + "\" y=\"" + detail::num(ly + 10, 6) +
       "\" font-size=\"10\" fill=\"#555\">outlined, dashed: Pareto front</text>\n";
  s += "<text x=\"" + detail::num(W - R + 14, 6) + "\" y=\"" + detail::num(ly + 26, 6) +
       "\" font-size=\"10\" fill=\"#555\">(hover a point for its values)</text>\n";
  s += "</svg>\n";
  return s;
}

}  // namespace report
