import { writeFileSync } from "node:fs";
import { Resvg } from "@resvg/resvg-js";
import * as vega from "vega";
import * as vl from "vega-lite";

/** Render a Vega-Lite spec to `<base>.svg` and `<base>.png`; returns the two paths. */
export async function renderPlot(spec: vl.TopLevelSpec, base: string): Promise<{ svg: string; png: string }> {
  const compiled = vl.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  writeFileSync(`${base}.svg`, svg);
  const png = new Resvg(svg, {
    fitTo: { mode: "zoom", value: 2 },
    background: "white",
    font: { loadSystemFonts: true, defaultFontFamily: "DejaVu Sans" },
  })
    .render()
    .asPng();
  writeFileSync(`${base}.png`, png);
  return { svg: `${base}.svg`, png: `${base}.png` };
}

/** One line per series: y against x (e.g. a metric against the budget, one line per policy). */
export function lineSpec(o: {
  title: string;
  values: Record<string, unknown>[];
  x: string;
  y: string;
  series: string;
  xTitle?: string;
  yTitle?: string;
  logY?: boolean;
  xFormat?: string;
}): vl.TopLevelSpec {
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v5.json",
    title: o.title,
    width: 460,
    height: 280,
    data: { values: o.values },
    mark: { type: "line", point: true },
    encoding: {
      x: {
        field: o.x,
        type: "quantitative",
        title: o.xTitle ?? o.x,
        axis: o.xFormat ? { format: o.xFormat } : {},
      },
      y: {
        field: o.y,
        type: "quantitative",
        title: o.yTitle ?? o.y,
        scale: o.logY ? { type: "log" } : { zero: false },
      },
      color: { field: o.series, type: "nominal", title: o.series, legend: { labelLimit: 420 } },
      strokeDash: { field: o.series, type: "nominal", title: o.series },
    },
  } as vl.TopLevelSpec;
}

/** Grouped bars: y for each series within each group (e.g. tokens/s per policy per scenario). */
export function barSpec(o: {
  title: string;
  values: Record<string, unknown>[];
  group: string;
  series: string;
  y: string;
  yTitle?: string;
}): vl.TopLevelSpec {
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v5.json",
    title: o.title,
    data: { values: o.values },
    mark: "bar",
    encoding: {
      column: { field: o.group, type: "nominal", title: null, header: { labelAngle: 0 } },
      x: { field: o.series, type: "nominal", title: null, axis: { labelAngle: -40 } },
      y: { field: o.y, type: "quantitative", title: o.yTitle ?? o.y },
      color: { field: o.series, type: "nominal", legend: null },
    },
    width: 110,
    height: 220,
  } as vl.TopLevelSpec;
}

/** A heatmap of values over (row, column) cells, e.g. matched head similarity per LLM layer and head. */
export function heatmapSpec(o: {
  title: string;
  values: Record<string, unknown>[];
  x: string;
  y: string;
  value: string;
  facet?: string;
}): vl.TopLevelSpec {
  const base = {
    mark: "rect",
    encoding: {
      x: { field: o.x, type: "ordinal", title: o.x },
      y: { field: o.y, type: "ordinal", title: o.y },
      color: {
        field: o.value,
        type: "quantitative",
        title: o.value,
        scale: { domain: [0, 1], scheme: "viridis" },
      },
    },
  };
  return (
    o.facet
      ? {
          $schema: "https://vega.github.io/schema/vega-lite/v5.json",
          title: o.title,
          data: { values: o.values },
          facet: { column: { field: o.facet, type: "nominal" } },
          spec: { ...base, width: 160, height: 120 },
        }
      : {
          $schema: "https://vega.github.io/schema/vega-lite/v5.json",
          title: o.title,
          data: { values: o.values },
          ...base,
          width: 200,
          height: 150,
        }
  ) as vl.TopLevelSpec;
}
