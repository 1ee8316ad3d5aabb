package train

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/loracc/loracc/graph"
	"github.com/loracc/loracc/internal/plot"
)

// metricsHeader is metrics.csv's first line; unit is the data's throughput
// unit (tokens or examples). The last column counts the padded work (for
// lm every position of the padded batch), beside the real work.
func metricsHeader(unit string) string {
	return "step,epoch,loss,lr,grad_norm," + unit + "_per_s,eval_loss,padded_" + unit + "_per_s"
}

type row struct {
	step                                                        int
	epoch, loss, lr, gradNorm, tokensPerS, evalLoss, paddedPerS float64
}

// metricsFile appends one CSV row per step to RUN/metrics.csv. Nothing
// per step stays in memory: loss.png is drawn from the file at the end, so
// memory is flat however long the run.
type metricsFile struct {
	run string
	f   *os.File
	w   *bufio.Writer
}

// openMetrics starts metrics.csv, or, when resuming, keeps its rows up to
// the checkpoint's step (later ones belong to steps that will run again).
func openMetrics(run string, keep int, resume bool, unit string) (*metricsFile, error) {
	if err := os.MkdirAll(run, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(run, "metrics.csv")
	m := &metricsFile{run: run}
	var kept [][]string
	if resume {
		// Read line by line, not as strict CSV: a kill can leave the last
		// row half written, and rows after the checkpoint are dropped
		// anyway.
		if data, err := graph.ReadRegular(path, 1<<30, "a run's metrics"); err == nil {
			for i, line := range strings.Split(string(data), "\n") {
				rec := strings.Split(line, ",")
				if i == 0 || len(rec) != 7 && len(rec) != 8 { // 7: before the padded column
					continue
				}
				step, err := strconv.Atoi(rec[0])
				if err != nil || step > keep {
					continue
				}
				if len(rec) == 7 {
					rec = append(rec, "") // a row from before the padded column
				}
				kept = append(kept, rec)
			}
		}
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, metricsHeader(unit))
	cw := csv.NewWriter(w)
	if err := cw.WriteAll(kept); err != nil {
		f.Close()
		return nil, err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		f.Close()
		return nil, err
	}
	m.f, m.w = f, bufio.NewWriter(f)
	return m, nil
}

func parse(s string) float64 {
	if s == "" {
		return math.NaN()
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

// fmtFloat writes a float32-exact value: the same run writes the same
// bytes.
func fmtFloat(v float64) string {
	if math.IsNaN(v) {
		return ""
	}
	return strconv.FormatFloat(v, 'g', 9, 64)
}

// Add appends a row. The methods of a nil metricsFile (a data-parallel
// rank other than 0, which writes no run files) do nothing.
func (m *metricsFile) Add(r row) error {
	if m == nil {
		return nil
	}
	_, err := fmt.Fprintf(m.w, "%d,%s,%s,%s,%s,%s,%s,%s\n", r.step, strconv.FormatFloat(r.epoch, 'f', 4, 64), fmtFloat(r.loss),
		fmtFloat(r.lr), fmtFloat(r.gradNorm), strconv.FormatFloat(r.tokensPerS, 'f', 1, 64), fmtFloat(r.evalLoss), strconv.FormatFloat(r.paddedPerS, 'f', 1, 64))
	return err
}

// Sync makes every row so far durable (checkpoints call it first, so the
// metrics never lag the checkpoint they belong to).
func (m *metricsFile) Sync() error {
	if m == nil {
		return nil
	}
	if err := m.w.Flush(); err != nil {
		return err
	}
	return m.f.Sync()
}

// Plot writes RUN/loss.png from metrics.csv.
func (m *metricsFile) Plot() error {
	if m == nil {
		return nil
	}
	if err := m.Sync(); err != nil {
		return err
	}
	path := filepath.Join(m.run, "metrics.csv")
	f, _, err := graph.OpenRegular(path)
	if err != nil {
		return err
	}
	defer f.Close()
	loss, eval := plot.Series{Name: "train loss"}, plot.Series{Name: "eval loss"}
	r := csv.NewReader(bufio.NewReader(f))
	r.ReuseRecord = true
	r.FieldsPerRecord = -1 // rows of 7 (older runs) or 8 fields
	for first := true; ; first = false {
		rec, err := r.Read()
		if err != nil {
			break
		}
		if first || len(rec) < 7 {
			continue
		}
		step := parse(rec[0])
		loss.X, loss.Y = append(loss.X, step), append(loss.Y, parse(rec[2]))
		if e := parse(rec[6]); !math.IsNaN(e) {
			eval.X, eval.Y = append(eval.X, step), append(eval.Y, e)
		}
	}
	series := []plot.Series{loss}
	if len(eval.X) > 0 {
		series = append(series, eval)
	}
	return plot.LossPNG(filepath.Join(m.run, "loss.png"), series, "loracc train")
}

// Close flushes and closes metrics.csv.
func (m *metricsFile) Close() error {
	if m == nil || m.f == nil {
		return nil
	}
	err := m.w.Flush()
	if cerr := m.f.Close(); err == nil {
		err = cerr
	}
	m.f = nil
	return err
}
