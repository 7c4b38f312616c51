// A line chart over training steps: every curve of the job page (loss,
// learning rate, memory, DPO's rewards and accuracy) is one of these.
import type { ReactNode } from "react";
import { CartesianGrid, Legend, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";

export interface StepLine {
  key: string;
  name: string;
  color: string;
  /** Sparse series (evaluations) show their points and join them across steps without a value. */
  sparse?: boolean;
}

export interface StepChartProps<Row> {
  data: Row[];
  lines: StepLine[];
  height: number;
  yDomain?: [number, number];
  yUnit?: string;
  yWidth?: number;
  yTickFormatter?: (value: number) => string;
  legend?: boolean;
  /** Extra recharts children drawn over the lines (a reference line, …). */
  children?: ReactNode;
}

export function StepChart<Row extends { step: number }>({ data, lines, height, yDomain, yUnit, yWidth, yTickFormatter, legend = true, children }: StepChartProps<Row>) {
  const yAxis = {
    ...(yDomain ? { domain: yDomain } : {}),
    ...(yUnit ? { unit: yUnit } : {}),
    ...(yWidth ? { width: yWidth } : {}),
    ...(yTickFormatter ? { tickFormatter: yTickFormatter } : {}),
  };
  return (
    <ResponsiveContainer width="100%" height={height}>
      <LineChart data={data}>
        <CartesianGrid strokeDasharray="3 3" />
        <XAxis dataKey="step" type="number" domain={["dataMin", "dataMax"]} allowDecimals={false} />
        <YAxis {...yAxis} />
        <Tooltip />
        {legend && <Legend />}
        {lines.map((line) =>
          line.sparse ? (
            <Line key={line.key} dataKey={line.key} name={line.name} stroke={line.color} connectNulls isAnimationActive={false} />
          ) : (
            <Line key={line.key} dataKey={line.key} name={line.name} stroke={line.color} dot={false} connectNulls isAnimationActive={false} />
          ),
        )}
        {children}
      </LineChart>
    </ResponsiveContainer>
  );
}
