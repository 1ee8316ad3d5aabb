package graph

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Outputs is one run's set of output files, written all or nothing.
//
// Every file is first staged as a hidden temporary file in its final folder,
// so the final rename cannot cross file systems. Commit renames them into
// place in staging order, keeping a hard-linked backup of every file it
// replaces until the last rename succeeded, so an error part way puts the
// previous files back. Abort, which callers defer, removes whatever was
// staged; after a successful Commit it does nothing. Writes stop with the
// context's error once it is cancelled (a signal), and Abort cleans up.
//
// Outputs also knows the run's inputs: an output whose target exists and is
// one of them (same device and inode, symlinks followed, so a symlinked or
// hard-linked path is caught too) is refused before anything is written,
// because replacing it would destroy what the run reads.
type Outputs struct {
	ctx      context.Context
	inputs   []inputFile
	files    []*outFile // committed in this order
	temps    []string   // scratch files and folders, never committed
	dirs     []string   // folders made for staged files, removed on abort if empty
	notes    []func()   // messages for the user, given once committed
	finished bool       // committed or aborted
}

type inputFile struct {
	path, role string
	st         os.FileInfo
}

type outFile struct {
	path   string // as the caller named it, for messages
	abs    string
	tmp    string
	backup string // the previous file, while Commit runs
	placed bool
	view   func() ([]byte, error) // for models: the model with locations at the staged names
}

// OverlapError reports an output that would replace one of the run's inputs.
type OverlapError struct {
	Output, Input, Role string
}

func (e *OverlapError) Error() string {
	return fmt.Sprintf("output %s is the %s %s (same file); choose another output path", e.Output, e.Role, e.Input)
}

// NewOutputs starts an empty output set; ctx cancels its writes.
func NewOutputs(ctx context.Context) *Outputs {
	return &Outputs{ctx: ctx}
}

// AddInput records a file the run reads; role names it in messages
// ("input model", "input adapter file").
func (o *Outputs) AddInput(path, role string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	o.addInput(path, role, st)
	return nil
}

func (o *Outputs) addInput(path, role string, st os.FileInfo) {
	for _, in := range o.inputs {
		if os.SameFile(in.st, st) {
			return
		}
	}
	o.inputs = append(o.inputs, inputFile{path: path, role: role, st: st})
}

// AddModel records a loaded model file and every external data file it
// references as inputs.
func (o *Outputs) AddModel(path string, m *Model) error {
	if err := o.AddInput(path, "input model"); err != nil {
		return err
	}
	for _, e := range m.externals() {
		st, err := e.stat()
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		o.addInput(filepath.Join(filepath.Dir(path), filepath.FromSlash(e.Location)), "input external data file", st)
	}
	return nil
}

// externals lists the distinct external files the model's tensors read, in
// order of first use.
func (m *Model) externals() []*External {
	var out []*External
	seen := map[string]bool{}
	var walk func(g *Graph)
	add := func(t *Tensor) {
		if t != nil && t.ext != nil && !seen[t.ext.Path()] {
			seen[t.ext.Path()] = true
			out = append(out, t.ext)
		}
	}
	walk = func(g *Graph) {
		for _, v := range g.Initializers {
			add(v.Const)
		}
		for _, n := range g.Nodes {
			for _, a := range n.Attrs {
				add(a.T)
				for _, t := range a.Tensors {
					add(t)
				}
				if a.G != nil {
					walk(a.G)
				}
				for _, sg := range a.Graphs {
					walk(sg)
				}
			}
		}
	}
	walk(m.Graph)
	return out
}

// stat follows the location through the folder's root, as reading does.
func (e *External) stat() (os.FileInfo, error) {
	f, st, err := e.open()
	if err != nil {
		return nil, err
	}
	f.Close()
	return st, nil
}

// claim checks that path may receive an output of this run and returns its
// absolute form: not committed yet, not named twice, not a folder, and not
// one of the inputs.
func (o *Outputs) claim(path string) (string, error) {
	if o.finished {
		return "", fmt.Errorf("%s: output set already committed or aborted", path)
	}
	if err := o.ctx.Err(); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	for _, f := range o.files {
		if f.abs == abs {
			return "", fmt.Errorf("output %s is written twice in one run", path)
		}
	}
	st, err := os.Stat(abs)
	if err != nil {
		return abs, nil // absent, or unreadable and the write will say so
	}
	if st.IsDir() {
		return "", fmt.Errorf("output %s is a folder", path)
	}
	for _, in := range o.inputs {
		if os.SameFile(st, in.st) {
			return "", &OverlapError{Output: path, Input: in.path, Role: in.role}
		}
	}
	for _, f := range o.files {
		if fst, err := os.Stat(f.abs); err == nil && os.SameFile(st, fst) {
			return "", fmt.Errorf("outputs %s and %s are the same file", f.path, path)
		}
	}
	return abs, nil
}

// Check makes the checks Create makes on each path without writing, so a
// long run can refuse an output that would land on an input at its start
// rather than at its end.
func (o *Outputs) Check(paths ...string) error {
	for _, p := range paths {
		if _, err := o.claim(p); err != nil {
			return err
		}
	}
	return nil
}

// Create stages a file at a path the user named, replaced on Commit.
func (o *Outputs) Create(path string, write func(io.Writer) error) error {
	abs, err := o.claim(path)
	if err != nil {
		return err
	}
	_, err = o.stage(path, abs, write)
	return err
}

// stage writes the temporary file of a claimed output.
func (o *Outputs) stage(path, abs string, write func(io.Writer) error) (*outFile, error) {
	tmp, err := writeTemp(o.ctx, filepath.Dir(abs), "."+filepath.Base(abs)+".tmp-*", write)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	f := &outFile{path: path, abs: abs, tmp: tmp}
	o.files = append(o.files, f)
	return f, nil
}

// scratch writes a temporary file that is never committed (a model for a
// check) and returns its path.
func (o *Outputs) scratch(dir, pattern string, write func(io.Writer) error) (string, error) {
	if o.finished {
		return "", errors.New("output set already committed or aborted")
	}
	tmp, err := writeTemp(o.ctx, dir, pattern, write)
	if err != nil {
		return "", fmt.Errorf("write %s: %w", filepath.Join(dir, pattern), err)
	}
	o.temps = append(o.temps, tmp)
	return tmp, nil
}

// CreateDir stages the files that write puts in a temporary folder as the
// contents of dir (made if missing), for writers that fill a whole folder,
// such as an adapter's. Files of dir that write does not produce stay.
func (o *Outputs) CreateDir(dir string, write func(tmp string) error) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := o.mkdirs(abs); err != nil {
		return fmt.Errorf("output folder %s: %w", dir, err)
	}
	tmp, err := os.MkdirTemp(abs, ".loracc-tmp-*")
	if err != nil {
		return fmt.Errorf("output folder %s: %w", dir, err)
	}
	o.temps = append(o.temps, tmp)
	if err := write(tmp); err != nil {
		return err
	}
	if err := o.ctx.Err(); err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			return fmt.Errorf("output folder %s: writer left %s, not a plain file", dir, e.Name())
		}
		path := filepath.Join(dir, e.Name())
		fabs, err := o.claim(path)
		if err != nil {
			return err
		}
		o.files = append(o.files, &outFile{path: path, abs: fabs, tmp: filepath.Join(tmp, e.Name())})
	}
	return nil
}

// mkdirs makes abs and missing parents, remembering each for Abort.
func (o *Outputs) mkdirs(abs string) error {
	st, err := os.Stat(abs)
	if err == nil {
		if !st.IsDir() {
			return errors.New("exists and is not a folder")
		}
		return nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(abs); parent != abs {
		if err := o.mkdirs(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(abs, 0o755); err != nil {
		return err
	}
	o.dirs = append(o.dirs, abs)
	return nil
}

// Commit renames every staged file into place. On an error, files already
// placed are put back as they were (restored from their backups, or
// removed if new) and the staged files are removed.
func (o *Outputs) Commit() error {
	if o.finished {
		return errors.New("output set already committed or aborted")
	}
	if err := o.ctx.Err(); err != nil {
		o.Abort()
		return fmt.Errorf("before writing the outputs: %w", err)
	}
	for _, f := range o.files {
		if err := f.place(); err != nil {
			o.rollback()
			o.Abort()
			return err
		}
	}
	o.finished = true
	synced := map[string]bool{}
	for _, f := range o.files {
		if f.backup != "" {
			os.Remove(f.backup)
		}
		if dir := filepath.Dir(f.abs); !synced[dir] {
			synced[dir] = true
			syncDir(dir)
		}
	}
	o.removeTemps()
	for _, note := range o.notes {
		note()
	}
	return nil
}

// place renames one staged file over its target, first keeping the
// previous file under a hidden name (a hard link, so the target never
// disappears; a rename where links are not supported).
func (f *outFile) place() error {
	if st, err := os.Lstat(f.abs); err == nil {
		if st.IsDir() {
			return fmt.Errorf("write %s: a folder is in the way", f.path)
		}
		b, err := reserveName(filepath.Dir(f.abs), "."+filepath.Base(f.abs)+".prev-*")
		if err != nil {
			return fmt.Errorf("write %s: keeping the previous file: %w", f.path, err)
		}
		if err := os.Link(f.abs, b); err != nil {
			if err := os.Rename(f.abs, b); err != nil {
				return fmt.Errorf("write %s: keeping the previous file: %w", f.path, err)
			}
		}
		f.backup = b
	}
	if err := os.Rename(f.tmp, f.abs); err != nil {
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	f.placed = true
	return nil
}

// rollback undoes the placed files, newest first.
func (o *Outputs) rollback() {
	for i := len(o.files) - 1; i >= 0; i-- {
		f := o.files[i]
		switch {
		case f.backup != "" && (f.placed || !exists(f.abs)):
			os.Rename(f.backup, f.abs)
		case f.placed:
			os.Remove(f.abs)
		case f.backup != "":
			os.Remove(f.backup)
		}
		f.placed, f.backup = false, ""
	}
}

// Abort removes every staged and scratch file and the folders made for
// them; the previous files stay as they were. Safe to call more than once
// and after Commit, where it does nothing.
func (o *Outputs) Abort() {
	if o.finished {
		return
	}
	o.finished = true
	for _, f := range o.files {
		os.Remove(f.tmp)
	}
	o.removeTemps()
	for i := len(o.dirs) - 1; i >= 0; i-- {
		os.Remove(o.dirs[i]) // only if empty: never a folder with other files
	}
}

func (o *Outputs) removeTemps() {
	for i := len(o.temps) - 1; i >= 0; i-- {
		os.RemoveAll(o.temps[i])
	}
	o.temps = nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// reserveName returns an unused name in dir matching pattern.
func reserveName(dir, pattern string) (string, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	name := f.Name()
	f.Close()
	return name, os.Remove(name)
}

// writeTemp writes a synced, complete file under a fresh hidden name in
// dir and returns that name; on an error nothing is left.
func writeTemp(ctx context.Context, dir, pattern string, write func(io.Writer) error) (_ string, err error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	bw := bufio.NewWriterSize(ctxWriter{ctx: ctx, w: f}, 1<<20)
	if err = write(bw); err != nil {
		return "", err
	}
	if err = bw.Flush(); err != nil {
		return "", err
	}
	if err = f.Sync(); err != nil {
		return "", err
	}
	if err = f.Close(); err != nil {
		return "", err
	}
	if err = os.Chmod(tmp, 0o644); err != nil {
		return "", err
	}
	return tmp, nil
}

// ctxWriter fails writes once ctx is cancelled, so a signal stops a long
// data file at the next buffer flush.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// WriteFileAtomic writes a file through a temporary file in the same
// folder, synced and renamed over path only after write succeeded, so a
// crash or a full disk never leaves a partial file under the final name.
func WriteFileAtomic(path string, write func(io.Writer) error) error {
	tmp, err := writeTemp(context.Background(), filepath.Dir(path), "."+filepath.Base(path)+".tmp-*", write)
	if err == nil {
		if err = os.Rename(tmp, path); err != nil {
			os.Remove(tmp)
		}
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
